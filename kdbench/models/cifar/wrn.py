"""Wide ResNet (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2): CRD benchmark CIFAR models; wrn_16_8 and wrn_28_10, which
the survey's rows (Gou et al. 2021, Tables 5-6) train, are the same family."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import KDModel, ModelOutput
from ..registry import register_model
from .common import _normal_fan_out, _pool


class _WideBasic(nn.Module):
    """Pre-activation block (BN-ReLU-conv twice); 1x1 conv shortcut when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equalInOut = cin == cout
        self.convShortcut = None if self.equalInOut else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        # When shapes change, the shortcut also sees the activated input (as in the benchmark).
        return out + (x if self.equalInOut else self.convShortcut(act))


class _WideGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[_WideBasic(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _bn_batch_stats(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """``bn(x)`` without updating its running statistics."""
    use_batch = bn.training
    return F.batch_norm(x, None if use_batch else bn.running_mean, None if use_batch else bn.running_var,
                        bn.weight, bn.bias, use_batch, 0.0, bn.eps)


class WideResNet(KDModel):
    """Zagoruyko & Komodakis 2016, depth 6n+4, widen factor k."""

    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        assert (depth - 4) % 6 == 0, "depth must be 6n+4"
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.block1 = _WideGroup(n, ch[0], ch[1], 1)
        self.block2 = _WideGroup(n, ch[1], ch[2], 2)
        self.block3 = _WideGroup(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]
        _normal_fan_out(self)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        emb = _pool(self.relu(self.bn1(f3)))
        # Pre-activation net: a stage's "pre-ReLU" output is the next layer's BN applied to it.
        pres = [f0, _bn_batch_stats(self.block2.layer[0].bn1, f1), _bn_batch_stats(self.block3.layer[0].bn1, f2),
                _bn_batch_stats(self.bn1, f3)]
        return ModelOutput(self.fc(emb), [f0, f1, f2, f3], emb, pres)

    TAIL = ("block3", "bn1", "relu", "fc")

    def forward_trunk(self, x: Tensor) -> Tensor:
        return self.block2(self.block1(self.conv1(x)))

    def forward_tail(self, h: Tensor) -> Tensor:
        return self.fc(_pool(self.relu(self.bn1(self.block3(h)))))


# Each architecture is a named function, so its name finds its definition.


@register_model("wrn_16_1", family="cifar", description="Wide ResNet-16-1, CRD benchmark")
def wrn_16_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    return WideResNet(16, 1, num_classes, in_channels)


@register_model("wrn_16_2", family="cifar", description="Wide ResNet-16-2, CRD benchmark")
def wrn_16_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    return WideResNet(16, 2, num_classes, in_channels)


@register_model("wrn_16_8", family="cifar",
                description="Wide ResNet-16-8 (Zagoruyko & Komodakis 2016): SP's CIFAR-10 student (Tung & Mori 2019), "
                            "not a CRD benchmark model")
def wrn_16_8(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    return WideResNet(16, 8, num_classes, in_channels)


@register_model("wrn_28_2", family="cifar",
                description="Wide ResNet-28-2: kdbench's teacher assistant between wrn_40_2 and wrn_16_2/wrn_40_1 "
                            "(not a CRD benchmark model)")
def wrn_28_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    return WideResNet(28, 2, num_classes, in_channels)


@register_model("wrn_40_1", family="cifar", description="Wide ResNet-40-1, CRD benchmark")
def wrn_40_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, 1, num_classes, in_channels)


@register_model("wrn_40_2", family="cifar", description="Wide ResNet-40-2, CRD benchmark")
def wrn_40_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_channels)


@register_model("wrn_28_10", family="cifar",
                description="Wide ResNet-28-10 (Zagoruyko & Komodakis 2016): a DML cohort member (Zhang et al. 2018), "
                            "not a CRD benchmark model")
def wrn_28_10(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    return WideResNet(28, 10, num_classes, in_channels)
