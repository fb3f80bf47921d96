"""MobileNetV2 (width 0.5, expansion 6: the benchmark's "mobile_half"): CRD benchmark CIFAR models."""
from __future__ import annotations

from torch import Tensor, nn

from ..base import KDModel, ModelOutput
from ..registry import register_model
from .common import _normal_fan_out, _pool


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, 1, 0, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(KDModel):
    """Sandler et al. 2018, CIFAR variant of the benchmark (stride-2 stem, no dropout)."""

    SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
               (None, 160, 3, 2), (None, 320, 1, 1))  # (expansion, channels, repeats, stride)
    FEATURE_AFTER = (1, 2, 4, 6)  # block groups whose outputs are the stage features

    def __init__(self, expand: int = 6, width: float = 0.5, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        cin = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTING:
            cout = int(c * width)
            group = []
            for i in range(n):
                group.append(_InvertedResidual(cin, cout, s if i == 0 else 1, expand if t is None else t))
                cin = cout
            self.blocks.append(nn.Sequential(*group))
        self.last_channel = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        _normal_fan_out(self, linear_std=0.01)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = self.conv1(x)
        feats, x = [f0], f0
        for i, group in enumerate(self.blocks):
            x = group(x)
            if i in self.FEATURE_AFTER:
                feats.append(x)
        emb = _pool(self.conv2(x))
        # The stages end in a linear bottleneck (no ReLU after it), so each stage output is already its
        # pre-activation: the same tensors serve both lists (AB reads stages 1-4). The stem's entry is
        # post-ReLU, exactly what the CRD benchmark returns when asked for this model's pre-activations.
        return ModelOutput(self.classifier(emb), feats, emb, feats)

    TAIL = ("blocks", "conv2", "classifier")  # of ``blocks``, the groups after the last-but-one stage

    @property
    def _split(self) -> int:
        return self.FEATURE_AFTER[-2] + 1  # the first block group of the deepest stage

    def forward_trunk(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks[:self._split]:
            x = group(x)
        return x

    def forward_tail(self, h: Tensor) -> Tensor:
        for group in self.blocks[self._split:]:
            h = group(h)
        return self.classifier(_pool(self.conv2(h)))

    def drop_trunk(self) -> "MobileNetV2":
        super().drop_trunk()
        for i in range(self._split):
            self.blocks[i] = nn.Identity()
        return self


@register_model("mobilenetv2", family="cifar",
                description="MobileNetV2 for CIFAR, width 0.5, expansion 6 (the benchmark's mobile_half)")
def mobilenetv2(num_classes: int = 100, in_channels: int = 3) -> MobileNetV2:
    return MobileNetV2(6, 0.5, num_classes, in_channels)
