"""The BP baselines of the authors' code (`model.bp_baseline=authors`), beside the BP twin.

The paper words its BP baseline as the AL prediction path trained end to end (the twin,
models.BPTwin); the authors' TensorFlow code builds two of them otherwise:
- BP-VGG: BatchNorm after every convolution and every dense layer, and no block-4 Dense(1024)s:
  the pooled 512x(H/16)x(W/16) features go straight into the bridge-shaped head.
- BP-ResNet: the residual stages, then global average pooling to 64 features, and BN in the head.
Both heads are Dense(5d)-BN-act, Dense(d)-BN-act, three Dense(d)-BN-act, Dense(classes). For the
MLP and the CNN the authors' BP network is the twin itself. The layers carry the twin's names
(s1..s4, bridge, dec4..dec2, out), so the report's distances and t-SNE read them alike; in BP-VGG
s4 is the flattened conv features (the Dense(1024) stage is not there).

The residual stages are the AL model's f, whose block is the code's `resBlock` (models/resnet.py).
BP-VGG's dense layers are the code's too: `tf.layers.dense(net, units, None, regularizer)` puts the
regulariser in `use_bias` and leaves the initializer at TF's default, so they start from Glorot-uniform
weights and get no L2 (`glorot` and `no_l2` marks, read by models.he_init and weight_decay.kernels).
"""
from __future__ import annotations

import torch.nn as nn

from ray_al.models.registry import Architecture


def _dense(n_in: int, n_out: int, code_vgg: bool) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    layer.glorot = layer.no_l2 = code_vgg  # BP-VGG: TF's default init, no L2 (module docstring)
    return layer


def _dense_bn(n_in: int, n_out: int, act, code_vgg: bool) -> list[nn.Module]:
    return [_dense(n_in, n_out, code_vgg), nn.BatchNorm1d(n_out), act()]


def _head(n_in: int, d: int, num_classes: int, act, n_blocks: int, pool: list[nn.Module], code_vgg: bool = False):
    bridge = nn.Sequential(*pool, nn.Flatten(), *_dense_bn(n_in, 5 * d, act, code_vgg),
                           *_dense_bn(5 * d, d, act, code_vgg))
    decoders = [nn.Sequential(*_dense_bn(d, d, act, code_vgg)) for _ in range(n_blocks - 1)]
    return bridge, decoders, _dense(d, num_classes, code_vgg)


def _conv_bn(c_in: int, c_out: int, act) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), act()]


def vgg(arch: Architecture, input_shape, num_classes: int, act):
    c, h, w = input_shape
    pool = nn.MaxPool2d(2)
    stages = [
        nn.Sequential(*_conv_bn(c, 128, act), *_conv_bn(128, 256, act), pool),
        nn.Sequential(*_conv_bn(256, 256, act), *_conv_bn(256, 512, act), nn.MaxPool2d(2)),
        nn.Sequential(*_conv_bn(512, 512, act), nn.MaxPool2d(2), *_conv_bn(512, 512, act), nn.MaxPool2d(2)),
        nn.Flatten(),  # no Dense(1024)s
    ]
    return (stages, *_head(512 * (h // 16) * (w // 16), arch.d, num_classes, act, len(stages), [], code_vgg=True))


def resnet(arch: Architecture, input_shape, num_classes: int, act):
    stages = list(arch.stages)
    channels = [m for m in stages[-1].modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
    return (stages, *_head(channels, arch.d, num_classes, act, len(stages), [nn.AdaptiveAvgPool2d(1)]))


# model name -> builder of (stages, bridge, decoders, out); absent: the authors' BP network is the twin
BUILDERS = {"vgg": vgg, "resnet20": resnet, "resnet32": resnet}
SAME_AS_TWIN = {"mlp", "cnn"}
