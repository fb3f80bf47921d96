"""ResNet-18/34/50 with a CIFAR stem (3x3 conv, no max-pool): CRD benchmark CIFAR models."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import KDModel, ModelOutput
from ..registry import register_model
from .common import _he_fan_out, _pool, _run_stages


class _TvBasic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes * self.expansion, stride)

    def forward(self, x: Tensor, with_preact: bool = False):
        pre = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)
        out = F.relu(pre)
        return (out, pre) if with_preact else out


class _TvBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(cin, planes * 4, stride)

    def forward(self, x: Tensor, with_preact: bool = False):
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        pre = self.bn3(self.conv3(out)) + self.shortcut(x)
        out = F.relu(pre)
        return (out, pre) if with_preact else out


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential:
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class CifarStemResNet(KDModel):
    def __init__(self, block, num_blocks, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, layers = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, (1 if i == 0 else 2) if j == 0 else 1))
                cin = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(cin, num_classes)
        _he_fan_out(self)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        x, feats, pres = _run_stages((self.layer1, self.layer2, self.layer3, self.layer4), f0)
        emb = _pool(x)
        return ModelOutput(self.linear(emb), [f0, *feats], emb, [f0, *pres])

    TAIL = ("layer4", "linear")

    def forward_trunk(self, x: Tensor) -> Tensor:
        return self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))

    def forward_tail(self, h: Tensor) -> Tensor:
        return self.linear(_pool(self.layer4(h)))


# Each architecture is a named function, so its name finds its definition.


@register_model("resnet18", family="cifar",
                description="ResNet-18 with a CIFAR stem (3x3 conv, no max-pool), CRD benchmark")
def resnet18(num_classes: int = 100, in_channels: int = 3) -> CifarStemResNet:
    return CifarStemResNet(_TvBasic, (2, 2, 2, 2), num_classes, in_channels)


@register_model("resnet34", family="cifar",
                description="ResNet-34 with a CIFAR stem (3x3 conv, no max-pool), CRD benchmark")
def resnet34(num_classes: int = 100, in_channels: int = 3) -> CifarStemResNet:
    return CifarStemResNet(_TvBasic, (3, 4, 6, 3), num_classes, in_channels)


@register_model("resnet50", family="cifar",
                description="ResNet-50 with a CIFAR stem (3x3 conv, no max-pool), CRD benchmark")
def resnet50(num_classes: int = 100, in_channels: int = 3) -> CifarStemResNet:
    return CifarStemResNet(_TvBottleneck, (3, 4, 6, 3), num_classes, in_channels)
