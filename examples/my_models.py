"""A model and a dataset of your own, in a module that every Ray block actor can import.

`model.module: my_models` in the config makes the driver and each block actor import this file
before looking the model up, so `@register("tiny_cnn")` runs in every process. Run from this
folder on a local Ray, the module is found (Ray puts the script's folder on the workers' path);
on a cluster, ship it with the job: `ray job submit --working-dir examples -- python own_model.py`
or `--runtime-env-json '{"py_modules": ["examples/my_models.py"]}'`.
"""
import numpy as np
import torch.nn as nn

from ray_al import Architecture, register


@register("tiny_cnn")
def tiny_cnn(input_shape, num_classes, act, d=64) -> Architecture:
    """Two AL blocks: f_1 a 3x3 conv, f_2 a strided conv with BatchNorm. The builder returns the
    f side only; ray_al adds each block's g, h and bridge b (targets of width d)."""
    c = input_shape[0]
    stages = [nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), act()),
              nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), act())]
    return Architecture(stages, d)


def digits(test_size: int = 360):
    """A data factory for `data.source: python`: scikit-learn's 8x8 digits as uint8 images
    [n, 1, 8, 8] (pixels 0..255, as image files would give them) and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255 / 16)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    return {"train": (x[test_size:], y[test_size:]), "test": (x[:test_size], y[:test_size]),
            "class_names": [str(k) for k in range(10)]}
