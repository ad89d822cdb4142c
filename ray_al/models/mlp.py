"""MLP of the paper: N = 2 dense stages of width d (MNIST 1024, CIFAR 3000)."""
import math

import torch.nn as nn

from ray_al.models.registry import Architecture, register


@register("mlp")
def mlp(input_shape, num_classes, act, d=None, depth=2) -> Architecture:
    in_features = math.prod(input_shape)
    if d is None:
        d = 1024 if input_shape[-1] <= 28 else 3000
    stages, width = [], in_features
    for i in range(depth):
        layers = [nn.Flatten()] if i == 0 else []
        stages.append(nn.Sequential(*layers, nn.Linear(width, d), act()))
        width = d
    return Architecture(stages, d)
