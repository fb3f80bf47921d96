"""ShuffleNetV1 (g=3) and ShuffleNetV2 (1x): CRD benchmark CIFAR models."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import KDModel, ModelOutput
from ..registry import register_model
from .common import _pool, _run_stages


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleV1Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cout // 4
        self.stride = stride
        self.g1 = 1 if cin == 24 else groups  # no grouped 1x1 right after the stem (paper, Sec. 3.3)
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: Tensor, with_preact: bool = False):
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        pre = torch.cat([out, res], 1) if self.stride == 2 else out + res
        out = F.relu(pre)
        return (out, pre) if with_preact else out


class ShuffleNetV1(KDModel):
    def __init__(self, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups: int = 3,
                 num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        layers = []
        for planes, n in zip(out_planes, num_blocks):
            units = []
            for i in range(n):
                # The first unit concatenates its pooled input, so its branch makes planes - cin channels.
                units.append(_ShuffleV1Unit(cin, planes - (cin if i == 0 else 0), 2 if i == 0 else 1, groups))
                cin = planes
            layers.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        x, feats, pres = _run_stages((self.layer1, self.layer2, self.layer3), f0)
        emb = _pool(x)
        return ModelOutput(self.linear(emb), [f0, *feats], emb, [f0, *pres])

    TAIL = ("layer3", "linear")

    def forward_trunk(self, x: Tensor) -> Tensor:
        return self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))

    def forward_tail(self, h: Tensor) -> Tensor:
        return self.linear(_pool(self.layer3(h)))


@register_model("shufflenetv1", family="cifar", description="ShuffleNetV1 g=3 for CIFAR, CRD benchmark")
def shufflenetv1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)


class _ShuffleV2Unit(nn.Module):
    """Channel split: half passes through, half goes 1x1 -> dw3x3 -> 1x1; concat; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor, with_preact: bool = False):
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        pre = self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))))
        out = channel_shuffle(torch.cat([x1, F.relu(pre)], 1), 2)
        # As in the benchmark, the pre-activation output is not shuffled.
        return (out, torch.cat([x1, pre], 1)) if with_preact else out


class _ShuffleV2Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x))))))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(KDModel):
    def __init__(self, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3), num_classes: int = 100,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        layers = []
        for cout, n in zip(out_channels[:3], num_blocks):
            layers.append(nn.Sequential(_ShuffleV2Down(cin, cout), *[_ShuffleV2Unit(cout) for _ in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(cin, out_channels[3], 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        x, feats, pres = _run_stages((self.layer1, self.layer2, self.layer3), f0)
        emb = _pool(F.relu(self.bn2(self.conv2(x))))
        return ModelOutput(self.linear(emb), [f0, *feats], emb, [f0, *pres])

    TAIL = ("layer3", "conv2", "bn2", "linear")

    def forward_trunk(self, x: Tensor) -> Tensor:
        return self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))

    def forward_tail(self, h: Tensor) -> Tensor:
        return self.linear(_pool(F.relu(self.bn2(self.conv2(self.layer3(h))))))


@register_model("shufflenetv2", family="cifar", description="ShuffleNetV2 1x for CIFAR, CRD benchmark")
def shufflenetv2(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)
