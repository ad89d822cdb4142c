"""The paper's metafeatures: hidden features of AL blocks and BP twins, class distances (Table 4) and t-SNE."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ray_al.core.batches import eval_batches
from ray_al.core.blocks import eval_mode

if TYPE_CHECKING:
    import numpy as np


def class_distances(features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """intra = mean over classes of the mean pairwise (Euclidean) distance inside the class;
    inter = mean pairwise distance between class centroids; ratio = inter / intra (higher: better separated)."""
    x = features.reshape(len(features), -1).double()
    classes = [c for c in labels.unique().tolist() if int((labels == c).sum()) >= 2]
    if len(classes) < 2:
        raise ValueError("class distances need two classes with two samples each")
    intra = sum(float(torch.pdist(x[labels == c]).mean()) for c in classes) / len(classes)
    centroids = torch.stack([x[labels == c].mean(dim=0) for c in classes])
    inter = float(torch.pdist(centroids).mean())
    return {"intra": intra, "inter": inter, "ratio": inter / intra if intra > 0 else float("inf")}


# -- named layers of the prediction path -------------------------------------------------------
# Both an AL model and its BP twin compute f_1..f_N, b_N, h_N..h_2, h_1 (the paper's Eq. 7), so the
# same names pick the same layer in both: s1..sN (after f_i), bridge (b_N(s_N), width d),
# dec{k} (after h_k, k = N..2), out (logits). AL also has b{i} (block i's bridge: its exit's
# target estimate). The BP twin's modules carry these names (models.BPTwin).
def sample_indices(n_total: int, n: int, seed: int = 0) -> torch.Tensor:
    """n indices drawn at random with a fixed seed: test splits may be sorted by class, so the first n
    would hold few classes; any prefix of the result is a random sample too (t-SNE takes fewer)."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def layer_names(n_blocks: int) -> list[str]:
    return [f"s{i}" for i in range(1, n_blocks + 1)] + ["bridge"] + \
        [f"dec{k}" for k in range(n_blocks, 1, -1)] + ["out"]


def paper_layers(model_name: str, n_blocks: int) -> list[str]:
    """The layers of the paper's t-SNE figures: MLP hidden 2, 4 and output (s2, bridge, out); CNN hidden
    4, 8 and 12 (s2, s4, dec3); for other models the first, the last stage and the output."""
    if model_name == "mlp" and n_blocks == 2:
        return ["s2", "bridge", "out"]
    if model_name == "cnn" and n_blocks == 4:
        return ["s2", "s4", "dec3"]
    return ["s1", f"s{n_blocks}", "out"]


def _check_layers(layers: list[str], known: list[str]) -> None:
    from ray_al.errors import ConfigError
    for name in layers:
        if name not in known:
            raise ConfigError(f"unknown layer '{name}' (known: {', '.join(known)})")


@torch.no_grad()
def al_features(blocks, x: torch.Tensor, layers: list[str], batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Activations of the named layers of an AL model (a list of ALBlocks) on x, on the CPU."""
    n = len(blocks)
    _check_layers(layers, layer_names(n) + [f"b{i}" for i in range(1, n + 1)] + ["out_sigmoid"])
    device = next(blocks[0].parameters()).device
    out = {name: [] for name in layers}
    with eval_mode(blocks):
        for xb in eval_batches(x, batch_size):
            points, s = {}, xb.to(device)
            for i, block in enumerate(blocks, start=1):
                s = block(s)
                points[f"s{i}"] = s
                if f"b{i}" in out:
                    points[f"b{i}"] = block.bridge(s)
            t = points["bridge"] = blocks[-1].bridge(s)
            for k in range(n, 1, -1):
                t = points[f"dec{k}"] = blocks[k - 1].decode(t)
            points["out"] = blocks[0].decode_logits(t)
            points["out_sigmoid"] = torch.sigmoid(points["out"])  # h_1 as the authors' inference ends: in [0, 1]
            for name in layers:
                out[name].append(points[name].cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


@torch.no_grad()
def bp_features(net, x: torch.Tensor, layers: list[str], batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Activations of the named layers of a BP twin (models.BPTwin) on x, on the CPU."""
    _check_layers(layers, layer_names(net.n_blocks))
    device = next(net.parameters()).device
    out = {name: [] for name in layers}
    with eval_mode([net]):
        for xb in eval_batches(x, batch_size):
            h, points = xb.to(device), {}
            for name, module in net.named_children():
                h = points[name] = module(h)
            for name in layers:
                out[name].append(points[name].cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def model_features(model, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """al_features for an AL model (a list of ALBlocks), bp_features for a BP twin."""
    return al_features(model, x, layers) if isinstance(model, list) else bp_features(model, x, layers)


def block_count_of(model) -> int:
    return len(model) if isinstance(model, list) else model.n_blocks


# -- t-SNE (paper Figures 3-4) --------------------------------------------------------------
def tsne_embed(features: torch.Tensor, seed: int = 0, max_iter: int = 1000) -> "np.ndarray":
    """2-D t-SNE of flattened features, after PCA to 50 dimensions (the usual step for wide layers)."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = features.reshape(len(features), -1).double().numpy()
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = min(30.0, (len(x) - 1) / 3)
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed, max_iter=max_iter)
    return tsne.fit_transform(np.asarray(x, dtype=np.float32))


def tsne_figure(rows: list[tuple[str, dict[str, torch.Tensor]]], labels: torch.Tensor, path,
                seed: int = 0, max_iter: int = 1000, class_names: list[str] | None = None) -> list[str]:
    """One row per model (e.g. [("BP", feats), ("AL", feats)]), one column per layer, points coloured
    by class; saved as PNG. Returns the panel titles, row by row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(feats) for _, feats in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(4 * cols, 4 * len(rows)), squeeze=False)
    titles = []
    y = labels.numpy()
    k = int(y.max()) + 1  # the same colour for a class in every panel
    for r, (model, feats) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            layer, f = list(feats.items())[c] if c < len(feats) else (None, None)
            if f is None:  # a row without this panel (the raw data is drawn once, in the first row)
                ax.axis("off")
                continue
            xy = tsne_embed(f, seed, max_iter)
            points = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10" if k <= 10 else "nipy_spectral", vmin=0,
                                vmax=9 if k <= 10 else k - 1, s=4)
            titles.append(f"{model}: {layer}")
            ax.set_title(titles[-1])
    if k <= 20:  # which colour is which class (beyond 20 a legend is noise)
        handles, names = points.legend_elements(num=list(range(k)))
        fig.legend(handles, [class_names[i] if class_names else str(i) for i in range(len(handles))],
                   title="class", loc="center right", fontsize=7)
        fig.tight_layout(rect=(0, 0, 0.93, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return titles
