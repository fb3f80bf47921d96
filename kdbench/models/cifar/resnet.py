"""ResNet for CIFAR (resnet8 ... resnet110, resnet8x4, resnet32x4): CRD benchmark CIFAR models; resnet26 and
resnet20x0.5, which the survey's rows (Gou et al. 2021, Tables 5-6) distil from or into, are the same family."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import KDModel, ModelOutput
from ..registry import register_model
from .common import _he_fan_out, _pool, _run_stages


class _ResBasic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor, with_preact: bool = False):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        pre = out + (x if self.downsample is None else self.downsample(x))
        out = F.relu(pre)
        return (out, pre) if with_preact else out


class CifarResNet(KDModel):
    """He et al. 2016 CIFAR ResNet (6n+2 layers, three stages)."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100,
                 in_channels: int = 3) -> None:
        super().__init__()
        assert (depth - 2) % 6 == 0, "depth must be 6n+2"
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        layers = []
        for i, planes in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != planes:
                down = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            blocks = [_ResBasic(cin, planes, stride, down)] + [_ResBasic(planes, planes) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            cin = planes
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(cin, num_classes)
        _he_fan_out(self)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = self.relu(self.bn1(self.conv1(x)))
        x, feats, pres = _run_stages((self.layer1, self.layer2, self.layer3), f0)
        emb = _pool(x)
        return ModelOutput(self.fc(emb), [f0, *feats], emb, [f0, *pres])

    TAIL = ("layer3", "fc")

    def forward_trunk(self, x: Tensor) -> Tensor:
        return self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))

    def forward_tail(self, h: Tensor) -> Tensor:
        return self.fc(_pool(self.layer3(h)))


# Each architecture is a named function, so its name finds its definition.


@register_model("resnet8", family="cifar", description="CIFAR ResNet-8 (widths 16/32/64), CRD benchmark")
def resnet8(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, (16, 16, 32, 64), num_classes, in_channels)


@register_model("resnet14", family="cifar", description="CIFAR ResNet-14 (widths 16/32/64), CRD benchmark")
def resnet14(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(14, (16, 16, 32, 64), num_classes, in_channels)


@register_model("resnet20", family="cifar", description="CIFAR ResNet-20 (widths 16/32/64), CRD benchmark")
def resnet20(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, (16, 16, 32, 64), num_classes, in_channels)


@register_model("resnet26", family="cifar",
                description="CIFAR ResNet-26 (n=4, widths 16/32/64): FSP's CIFAR-10 teacher (Yim et al. 2017), "
                            "not a CRD benchmark model")
def resnet26(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(26, (16, 16, 32, 64), num_classes, in_channels)


@register_model("resnet32", family="cifar", description="CIFAR ResNet-32 (widths 16/32/64), CRD benchmark")
def resnet32(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, (16, 16, 32, 64), num_classes, in_channels)


@register_model("resnet44", family="cifar", description="CIFAR ResNet-44 (widths 16/32/64), CRD benchmark")
def resnet44(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(44, (16, 16, 32, 64), num_classes, in_channels)


@register_model("resnet56", family="cifar", description="CIFAR ResNet-56 (widths 16/32/64), CRD benchmark")
def resnet56(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, (16, 16, 32, 64), num_classes, in_channels)


@register_model("resnet110", family="cifar", description="CIFAR ResNet-110 (widths 16/32/64), CRD benchmark")
def resnet110(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(110, (16, 16, 32, 64), num_classes, in_channels)


@register_model("resnet20x0.5", family="cifar",
                description="CIFAR ResNet-20 at half width (8/16/32): IRG's student (Liu et al. 2019), "
                            "not a CRD benchmark model")
def resnet20x0_5(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, (8, 8, 16, 32), num_classes, in_channels)


@register_model("resnet20x4", family="cifar",
                description="CIFAR ResNet-20 with 4x width (32/64/128/256): kdbench's teacher assistant between "
                            "resnet32x4 and resnet8x4 (not a CRD benchmark model)")
def resnet20x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, (32, 64, 128, 256), num_classes, in_channels)


@register_model("resnet8x4", family="cifar",
                description="CIFAR ResNet-8 with 4x width (32/64/128/256), CRD benchmark")
def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, (32, 64, 128, 256), num_classes, in_channels)


@register_model("resnet32x4", family="cifar",
                description="CIFAR ResNet-32 with 4x width (32/64/128/256), CRD benchmark")
def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, (32, 64, 128, 256), num_classes, in_channels)
