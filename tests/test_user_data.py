"""Your own data, without Ray: a Python factory (tensors, arrays or a torch Dataset), a folder of
images per class (ImageFolder layout), and the seeded validation split reported every epoch."""
import numpy as np
import pytest
import torch
from PIL import Image

from ray_al.config import DataConfig
from ray_al.data.datasets import load_dataset
from ray_al.errors import ConfigError, DataError
from ray_al.run.loop import train
from tests.helpers import tiny_config

FACTORY = '''
import numpy as np
import torch


def arrays(n=60, float_pixels=False):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (n, 4, 4), dtype=np.uint8)  # [n, H, W]: one channel
    y = rng.integers(0, 3, n)
    if float_pixels:
        x = x.astype(np.float32) / 255
    return {"train": (x, y), "test": (torch.from_numpy(x[:12]), torch.from_numpy(y[:12])),
            "class_names": ["a", "b", "c"]}


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n):
        self.x, self.y = torch.rand(n, 2, 4, 4), torch.arange(n) % 2

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def datasets():
    return Pairs(40), Pairs(10)


def broken():
    return "not a split"
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "user_data_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_data_factory"


def _source(factory, fn, **kw):
    return DataConfig(source="python", factory=f"{factory}:{fn}", **kw)


def test_factory_of_arrays_uint8_pixels(factory):
    ds = load_dataset(_source(factory, "arrays"))
    assert ds.input_shape == (1, 4, 4) and ds.num_classes == 3 and ds.class_names == ["a", "b", "c"]
    assert len(ds.train_x) == 60 and len(ds.test_x) == 12
    raw = ds.train_x * ds.std[None, :, None, None] + ds.mean[None, :, None, None]
    assert 0 <= float(raw.min()) and float(raw.max()) <= 1.0001  # uint8 / 255, then normalised


def test_factory_float_pixels_are_taken_as_they_are(factory):
    as_uint8 = load_dataset(_source(factory, "arrays"))
    as_float = load_dataset(_source(factory, "arrays", factory_args={"float_pixels": True}))
    assert torch.allclose(as_uint8.train_x, as_float.train_x, atol=1e-5)


def test_factory_of_torch_datasets(factory):
    ds = load_dataset(_source(factory, "datasets", normalize=False))
    assert ds.input_shape == (2, 4, 4) and ds.num_classes == 2 and len(ds.train_x) == 40
    assert torch.equal(ds.train_y, torch.arange(40) % 2)


@pytest.mark.parametrize("fn, expected", [("broken", "must return (train, test)"),
                                          ("missing", "cannot be loaded: AttributeError")])
def test_factory_errors_are_one_line(factory, fn, expected):
    with pytest.raises(DataError, match=expected.replace("(", r"\(").replace(")", r"\)")) as e:
        load_dataset(_source(factory, fn))
    assert "\n" not in str(e.value)


def test_factory_needs_module_and_function():
    with pytest.raises(ConfigError, match="data.factory=module:function"):
        tiny_config(".", data={"source": "python", "factory": "no_colon"})


# -- image folders -----------------------------------------------------------------------------------
def write_images(root, per_class: dict, size=(6, 5), mode="L", seed=0):
    """root/<class>/<i>.png, pixel values drawn per class so classes differ."""
    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = size if mode == "L" else (*size, 3)
            pixels = np.clip(rng.normal(40 + 80 * k, 20, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i}.png")


def test_imagefolder_train_and_test_subfolders(tmp_path):
    write_images(tmp_path / "train", {"cat": 5, "ant": 4, "dog": 3})
    write_images(tmp_path / "test", {"cat": 2, "dog": 1})
    ds = load_dataset(DataConfig(source="imagefolder", path=str(tmp_path), normalize=False))
    assert ds.class_names == ["ant", "cat", "dog"]  # sorted folder names, as torchvision's ImageFolder
    assert ds.input_shape == (1, 6, 5) and len(ds.train_x) == 12 and len(ds.test_x) == 3
    assert ds.train_y.tolist() == [0] * 4 + [1] * 5 + [2] * 3
    first = np.asarray(Image.open(tmp_path / "train" / "ant" / "0.png"))
    assert torch.equal(ds.train_x[0, 0], torch.tensor(first).float() / 255)


def test_imagefolder_one_folder_split_by_seed(tmp_path):
    write_images(tmp_path, {"a": 10, "b": 10})
    cfg = DataConfig(source="imagefolder", path=str(tmp_path), test_fraction=0.25)
    one, two = load_dataset(cfg), load_dataset(cfg)
    assert len(one.test_x) == 5 and len(one.train_x) == 15
    assert torch.equal(one.test_x, two.test_x)


def test_imagefolder_colour_and_resize(tmp_path):
    write_images(tmp_path / "a", {"x": 2}, size=(6, 6), mode="RGB")
    write_images(tmp_path / "a", {"y": 2}, size=(9, 7), mode="L")
    with pytest.raises(DataError, match=r"image is 9x7, expected 6x6 \(set data.image_size"):
        load_dataset(DataConfig(source="imagefolder", path=str(tmp_path / "a"), test_fraction=0.5))
    ds = load_dataset(DataConfig(source="imagefolder", path=str(tmp_path / "a"), test_fraction=0.5,
                                 image_size=[8, 8]))
    assert ds.input_shape == (3, 8, 8)  # one RGB image makes the set RGB; grey ones are converted


def test_imagefolder_without_images_is_one_line(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="no class folders with images"):
        load_dataset(DataConfig(source="imagefolder", path=str(tmp_path)))


# -- validation split -----------------------------------------------------------------------------------
def test_val_split_is_seeded_and_disjoint():
    full = load_dataset(DataConfig())
    a, b = load_dataset(DataConfig(val_fraction=0.2)), load_dataset(DataConfig(val_fraction=0.2))
    assert len(a.val_x) == round(0.2 * len(full.train_x)) and len(a.train_x) + len(a.val_x) == len(full.train_x)
    assert torch.equal(a.val_x, b.val_x)
    train_rows = {tuple(r.tolist()) for r in a.train_x.flatten(1)}
    assert not any(tuple(r.tolist()) in train_rows for r in a.val_x.flatten(1)[:50])
    assert len(a.test_x) == len(full.test_x)


def test_val_accuracy_of_every_exit_is_reported_each_epoch(tmp_path):
    lines = []
    result = train(tiny_config(tmp_path, data={"val_fraction": 0.1}, train={"trainer": "al_local", "epochs": 2}),
                   log=lines.append)
    for record in result.history:
        assert {"val_exit_1", "val_exit_2", "val_acc", "exit_1", "exit_2", "test_acc"} <= set(record)
        assert record["val_acc"] == record["val_exit_2"]
    assert any("val_acc=" in line and "test_acc=" in line for line in lines)
