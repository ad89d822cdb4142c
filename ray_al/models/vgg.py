"""VGG of the paper (no batch norm): 4 stages
conv128,conv256,pool ; conv256,conv512,pool ; conv512,pool,conv512,pool ; Dense1024,Dense1024."""
import torch.nn as nn

from ray_al.models.registry import Architecture, register


def conv(c_in, c_out, act):
    return [nn.Conv2d(c_in, c_out, 3, padding=1), act()]


def pool():
    return nn.MaxPool2d(2)


def _no_l2(layer):
    """The authors' code passes these layers' regulariser as `use_bias`: no L2 (ray_al/weight_decay.py)."""
    layer.no_l2 = True
    return layer


@register("vgg")
def vgg(input_shape, num_classes, act, d=None) -> Architecture:
    if d is None:
        d = 500 if num_classes >= 100 else 300
    c, h, w = input_shape
    flat = 512 * (h // 16) * (w // 16)  # four 2x2 poolings before the dense stage
    stages = [
        nn.Sequential(*conv(c, 128, act), *conv(128, 256, act), pool()),
        nn.Sequential(*conv(256, 256, act), *conv(256, 512, act), pool()),
        nn.Sequential(*conv(512, 512, act), pool(), *conv(512, 512, act), pool()),
        nn.Sequential(nn.Flatten(), _no_l2(nn.Linear(flat, 1024)), act(), _no_l2(nn.Linear(1024, 1024)), act()),
    ]
    return Architecture(stages, d)
