"""VGG with BatchNorm (vgg8 ... vgg19; no FC layers but the classifier): CRD benchmark models."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import KDModel, ModelOutput
from ..registry import register_model
from .common import _normal_fan_out

_VGG_CFG = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _vgg_block(widths: list[int], cin: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])  # the block ends at BN: its output is the pre-activation


class VGG(KDModel):
    def __init__(self, depth: int, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        cfg = _VGG_CFG[depth]
        self.num_classes = num_classes
        cins = [in_channels] + [c[-1] for c in cfg[:-1]]
        for i, (widths, cin) in enumerate(zip(cfg, cins)):
            setattr(self, f"block{i}", _vgg_block(widths, cin))
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        _normal_fan_out(self, linear_std=0.01)

    def forward(self, x: Tensor) -> ModelOutput:
        h = x.shape[2]
        f0 = F.relu(self.block0(x))
        x = self.pool0(f0)
        feats, pres = [f0], [f0]
        for i, pool in ((1, self.pool1), (2, self.pool2), (3, None), (4, None)):
            pre = getattr(self, f"block{i}")(x)
            x = F.relu(pre)
            feats.append(x)
            pres.append(pre)
            if pool is not None:
                x = pool(x)
            elif i == 3 and h == 64:  # the benchmark pools once more only for 64x64 inputs
                x = self.pool3(x)
        emb = self.pool4(x).flatten(1)
        return ModelOutput(self.classifier(emb), feats, emb, pres)

    TAIL = ("block4", "pool4", "classifier")

    def forward_trunk(self, x: Tensor) -> Tensor:
        h = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool2(F.relu(self.block2(self.pool1(F.relu(self.block1(x))))))
        x = F.relu(self.block3(x))
        return self.pool3(x) if h == 64 else x

    def forward_tail(self, h: Tensor) -> Tensor:
        return self.classifier(self.pool4(F.relu(self.block4(h))).flatten(1))


# Each architecture is a named function, so its name finds its definition.


@register_model("vgg8", family="cifar", description="VGG-8 with BatchNorm (CIFAR), CRD benchmark")
def vgg8(num_classes: int = 100, in_channels: int = 3) -> VGG:
    return VGG(8, num_classes, in_channels)


@register_model("vgg11", family="cifar", description="VGG-11 with BatchNorm (CIFAR), CRD benchmark")
def vgg11(num_classes: int = 100, in_channels: int = 3) -> VGG:
    return VGG(11, num_classes, in_channels)


@register_model("vgg13", family="cifar", description="VGG-13 with BatchNorm (CIFAR), CRD benchmark")
def vgg13(num_classes: int = 100, in_channels: int = 3) -> VGG:
    return VGG(13, num_classes, in_channels)


@register_model("vgg16", family="cifar", description="VGG-16 with BatchNorm (CIFAR), CRD benchmark")
def vgg16(num_classes: int = 100, in_channels: int = 3) -> VGG:
    return VGG(16, num_classes, in_channels)


@register_model("vgg19", family="cifar", description="VGG-19 with BatchNorm (CIFAR), CRD benchmark")
def vgg19(num_classes: int = 100, in_channels: int = 3) -> VGG:
    return VGG(19, num_classes, in_channels)
