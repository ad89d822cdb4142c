"""ResNet-20 / ResNet-32 of the paper as 4 AL stages: stem conv16+BN ; 16 x n ; 32 x n /s2 ;
64 x n /s2, with the residual block of the authors' code (n = 3 or 5). Batch norm lives inside
its stage, so its running statistics belong to that block's state_dict."""
import torch.nn as nn

from ray_al.models.registry import Architecture, register


class BasicBlock(nn.Module):
    """The authors' `resBlock` (CIFAR10/models.py at 5069adc): conv-BN-act twice (the activation after
    the second BN as well), plus the shortcut (a 1x1 conv with its bias and no BN where the shape
    changes), then act. The 3x3 convs carry no bias: the BN right after cancels it (the code's stays 0)."""

    def __init__(self, c_in, c_out, stride, act):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), act(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), act())
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride=stride)
        self.act = act()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


def stage(c_in, c_out, n, stride, act):
    return nn.Sequential(*[BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, act)
                           for i in range(n)])


def resnet(input_shape, num_classes, act, d, n) -> Architecture:
    if d is None:
        d = 500 if num_classes >= 100 else 300
    stem = nn.Sequential(nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), act())
    return Architecture([stem, stage(16, 16, n, 1, act), stage(16, 32, n, 2, act), stage(32, 64, n, 2, act)], d)


@register("resnet20")
def resnet20(input_shape, num_classes, act, d=None) -> Architecture:
    return resnet(input_shape, num_classes, act, d, n=3)


@register("resnet32")
def resnet32(input_shape, num_classes, act, d=None) -> Architecture:
    return resnet(input_shape, num_classes, act, d, n=5)
