"""ResNeXt-29 (8x64d) for CIFAR (Xie et al., CVPR 2017, Sec. 5.3): the ``resnext29`` of TF-KD's CIFAR-100 table
(Yuan et al. 2020) and of the survey's Tf-KD row. Not a CRD benchmark model.

A 3x3 stem of 64 channels, then three stages of three bottleneck blocks (depth 9 x 3 + 2 = 29) with outputs 256,
512 and 1024 channels at 32, 16 and 8 pixels; each block reduces by 1x1 conv to ``cardinality x width`` channels
(8 x 64 = 512 in the first stage, doubled in each later one), runs a grouped 3x3 conv (8 groups; stride 2 in the
first block of stages 2 and 3), expands by 1x1 conv, and adds the input (a 1x1 conv + BN shortcut where shapes
change). BN after every conv; ReLU after each but the last, and after the sum. About 34.4M parameters (Xie et al.,
Table 7); some 5.4G multiply-adds per 32x32 image, so a 240-epoch run is a GPU job.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import KDModel, ModelOutput
from ..registry import register_model
from .common import _he_fan_out, _pool, _run_stages


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, cardinality: int, group_width: int) -> None:
        super().__init__()
        mid = cardinality * group_width
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor, with_preact: bool = False):
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        pre = self.bn3(self.conv3(out)) + self.shortcut(x)
        out = F.relu(pre)
        return (out, pre) if with_preact else out


class CifarResNeXt(KDModel):
    """ResNeXt for CIFAR, depth 9n+2: ``n`` bottlenecks per stage, ``cardinality`` groups of ``width`` channels
    in the first stage (doubled per stage), stage outputs 4 x 64 x 2^i."""

    def __init__(self, depth: int = 29, cardinality: int = 8, width: int = 64, num_classes: int = 100,
                 in_channels: int = 3) -> None:
        super().__init__()
        assert (depth - 2) % 9 == 0, "depth must be 9n+2"
        n = (depth - 2) // 9
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, layers = 64, []
        for i in range(3):
            cout, stride = 256 << i, 1 if i == 0 else 2
            blocks = [_Bottleneck(cin if j == 0 else cout, cout, stride if j == 0 else 1, cardinality, width << i)
                      for j in range(n)]
            layers.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(cin, num_classes)
        _he_fan_out(self)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        x, feats, pres = _run_stages((self.layer1, self.layer2, self.layer3), f0)
        emb = _pool(x)
        return ModelOutput(self.fc(emb), [f0, *feats], emb, [f0, *pres])

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Per stage after the stem, the BN on the residual branch of its last ReLU (OFD's margins)."""
        return [layer[-1].bn3 for layer in (self.layer1, self.layer2, self.layer3)]

    TAIL = ("layer3", "fc")

    def forward_trunk(self, x: Tensor) -> Tensor:
        return self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))

    def forward_tail(self, h: Tensor) -> Tensor:
        return self.fc(_pool(self.layer3(h)))


@register_model("resnext29", family="cifar",
                description="ResNeXt-29 8x64d for CIFAR (Xie et al. 2017): TF-KD's student, not a CRD benchmark model")
def resnext29(num_classes: int = 100, in_channels: int = 3) -> CifarResNeXt:
    return CifarResNeXt(29, 8, 64, num_classes, in_channels)
