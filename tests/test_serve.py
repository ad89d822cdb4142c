"""`ray-al serve`: a real Ray Serve application on loopback (one per module), real HTTP requests,
answers equal to `ray-al predict`, bad requests answered with a 400 and a one-line reason while
the server keeps serving."""
import io
import socket

import numpy as np
import pytest
import requests
from PIL import Image

from ray_al.data.datasets import load_dataset
from ray_al.inference.prediction import load
from ray_al.run.loop import train
from tests.helpers import png_header, tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    """A trained digits run, its test images as PNG files, and the app serving it."""
    from ray import serve

    from ray_al.inference.serve import start

    root = tmp_path_factory.mktemp("serve")
    cfg = tiny_config(root, optim={"lr": 1e-2}, name="r", train={"trainer": "al_local", "epochs": 3},
                      checkpoint={"enabled": True})
    train(cfg, log=lambda line: None)
    raw = (load_dataset(cfg.data.__class__(normalize=False)).test_x[:40, 0] * 255).round().byte().numpy()
    (root / "png").mkdir()
    for i, img in enumerate(raw):
        Image.fromarray(img).save(root / "png" / f"{i:02d}.png")
    url = start(root / "r", port=_free_port(), threshold=0.5, cpus_per_block=0.25)
    yield root, url
    serve.shutdown()


def _post(url, body, **params):
    return requests.post(url, data=body, params=params, timeout=60)


def test_http_answers_equal_ray_al_predict(served):
    root, url = served
    files = sorted((root / "png").iterdir())
    for params in ({}, {"exit": "1"}, {"threshold": "0.99"}):
        expected = load(root / "r").predict(files, exit=params.get("exit", "auto"),
                                            threshold=float(params.get("threshold", 0.5)))
        got = [_post(url, f.read_bytes(), **params) for f in files]
        assert all(r.status_code == 200 for r in got)
        answers = [r.json() for r in got]
        assert [{k: a[k] for k in ("prediction", "class", "exit")} for a in answers] == \
            [{k: e[k] for k in ("prediction", "class", "exit")} for e in expected], params
        assert np.allclose([a["confidence"] for a in answers], [e["confidence"] for e in expected], atol=1e-5)
    assert {a["exit"] for a in [r.json() for r in (_post(url, f.read_bytes()) for f in files)]} == {1, 2}


def _png(size):
    buf = io.BytesIO()
    Image.fromarray(np.zeros(size, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("body, params, reason", [
    (b"", {}, "request body: empty"),
    (b"not an image at all", {}, "request body: not an image"),
    (_png((16, 16)), {}, "request body: image is 16x16, expected 8x8"),
    (_png((8, 8)), {"exit": "5"}, "exit 5: the model has exits 1..2"),
    (_png((8, 8)), {"threshold": "high"}, "threshold 'high' is not a number"),
    (png_header(20000, 20000), {}, "request body: Image size (400000000 pixels) exceeds limit"),
], ids=["empty", "not an image", "wrong size", "exit beyond the model", "threshold not a number", "bomb"])
def test_bad_requests_get_a_400_and_the_server_keeps_serving(served, body, params, reason):
    root, url = served
    r = _post(url, body, **params)
    assert r.status_code == 400 and r.json()["error"].startswith(reason), r.text
    assert "\n" not in r.json()["error"]
    ok = _post(url, (root / "png" / "00.png").read_bytes())
    assert ok.status_code == 200 and set(ok.json()) == {"prediction", "class", "confidence", "exit"}


def test_deployments_that_cannot_be_placed_end_in_one_line_within_the_ready_timeout(served):
    """Two CPUs a replica passes the check against the cluster (it has 2) but finds no room beside the app
    already served: the wait ends at --ready-timeout, the application is removed, the first app serves on."""
    from ray import serve

    from ray_al.errors import ConfigError
    from ray_al.inference.serve import start

    root, url = served
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(ConfigError, match=r"Serve deployment of the run failed: not running after 3s "
                                          r"\(--ready-timeout\): .*stage-1"):
        start(root / "r", port=port, name="too_big", route_prefix="/big", cpus_per_block=2, ready_timeout_s=3)
    assert "too_big" not in serve.status().applications or \
        serve.status().applications["too_big"].status.value == "DELETING"
    assert _post(url, (root / "png" / "00.png").read_bytes()).status_code == 200
