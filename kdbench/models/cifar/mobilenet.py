"""MobileNet (v1; Howard et al. 2017) for CIFAR: the ``mobilenet`` of the DML paper's cohorts (Zhang et al., CVPR
2018, Table 1: 3.3M parameters on CIFAR-100) and of the survey's DML rows. Not a CRD benchmark model.

The ImageNet network at width 1.0 -- a 3x3 stem of 32 channels, then 13 depthwise-separable blocks (3x3
depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU) widening to 1024, global pooling and one linear layer -- with
the stem at stride 1 for 32x32 inputs; the four stride-2 blocks are kept, so the last maps are 2x2. The DML paper
does not give its CIFAR strides; its parameter count does not depend on them.

Stages are the blocks at each resolution (32, 32, 16, 8, 4, 2 after the stem, as a CIFAR ResNet's first stage
keeps the stem's resolution): ``features[0]`` is the stem, ``features[1:]`` the five stages; a stage's
pre-activation is its last pointwise BN's output, before the ReLU.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import KDModel, ModelOutput
from ..registry import register_model
from .common import _he_fan_out, _pool, _run_stages

# (output channels, stride) of the 13 blocks, grouped by the resolution they produce.
STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1)),
    ((1024, 2), (1024, 1)),
)


class _Separable(nn.Module):
    """3x3 depthwise conv, BN, ReLU, then 1x1 pointwise conv, BN, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, cout, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, with_preact: bool = False):
        pre = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out = F.relu(pre)
        return (out, pre) if with_preact else out


class MobileNet(KDModel):
    """MobileNet v1 at width 1.0 on 32x32 inputs (see the module docstring for the CIFAR strides)."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        cin, layers = 32, []
        for stage in STAGES:
            blocks = []
            for cout, stride in stage:
                blocks.append(_Separable(cin, cout, stride))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4, self.layer5 = layers
        self.fc = nn.Linear(cin, num_classes)
        _he_fan_out(self)

    @property
    def _layers(self) -> tuple[nn.Sequential, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4, self.layer5

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        x, feats, pres = _run_stages(self._layers, f0)
        emb = _pool(x)
        return ModelOutput(self.fc(emb), [f0, *feats], emb, [f0, *pres])

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Per stage after the stem, the BN whose output its last ReLU reads (OFD's margins)."""
        return [layer[-1].bn2 for layer in self._layers]

    TAIL = ("layer5", "fc")

    def forward_trunk(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for layer in self._layers[:-1]:
            x = layer(x)
        return x

    def forward_tail(self, h: Tensor) -> Tensor:
        return self.fc(_pool(self.layer5(h)))


@register_model("mobilenet", family="cifar",
                description="MobileNet v1 (width 1.0) for CIFAR: the DML paper's MobileNet, not a CRD benchmark model")
def mobilenet(num_classes: int = 100, in_channels: int = 3) -> MobileNet:
    return MobileNet(num_classes, in_channels)
