"""CNN of the paper: 4 stages of two 3x3 convolutions (32, 32, 64, 64 channels), stride 2
in the last convolution of stages 2 and 4."""
import torch.nn as nn

from ray_al.models.registry import Architecture, register


def conv(c_in, c_out, act, stride=1):
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), act()]


@register("cnn")
def cnn(input_shape, num_classes, act, d=None) -> Architecture:
    if d is None:
        d = 500 if num_classes >= 100 else 256
    c = input_shape[0]
    stages = [
        nn.Sequential(*conv(c, 32, act), *conv(32, 32, act)),
        nn.Sequential(*conv(32, 32, act), *conv(32, 32, act, stride=2)),
        nn.Sequential(*conv(32, 64, act), *conv(64, 64, act)),
        nn.Sequential(*conv(64, 64, act), *conv(64, 64, act, stride=2)),
    ]
    return Architecture(stages, d)
