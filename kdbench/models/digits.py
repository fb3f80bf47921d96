"""Small conv nets for the 8x8 scikit-learn digits (the default benchmark).

Three stages (8x8 -> 4x4 -> 2x2), each conv-BN-ReLU, then global average
pooling and a linear classifier: the same shape of network as the CIFAR
ResNets, so feature- and relation-based methods run on them unchanged.
"""
from __future__ import annotations

from torch import Tensor, nn

from .base import KDModel, ModelOutput
from .registry import register_model


class _Stage(nn.Module):
    """``depth`` conv-BN layers; ReLU between them and after the last.

    The output before the final ReLU is kept as the pre-activation feature.
    """

    def __init__(self, cin: int, cout: int, stride: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [
                nn.Conv2d(cin if i == 0 else cout, cout, 3, stride if i == 0 else 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            ]
            if i < depth - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.body(x)
        return pre, self.act(pre)


class DigitsCNN(KDModel):
    def __init__(self, widths: tuple[int, int, int], depth: int, num_classes: int = 10,
                 in_channels: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        cins = (in_channels,) + tuple(widths[:-1])
        self.stages = nn.ModuleList(
            _Stage(cin, cout, 1 if i == 0 else 2, depth) for i, (cin, cout) in enumerate(zip(cins, widths))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> ModelOutput:
        feats, pres = [], []
        for stage in self.stages:
            pre, x = stage(x)
            pres.append(pre)
            feats.append(x)
        emb = self.pool(x).flatten(1)
        return ModelOutput(logits=self.fc(emb), features=feats, embedding=emb, preact_features=pres)

    TAIL = ("stages", "pool", "fc")  # of ``stages``, the last

    def forward_trunk(self, x: Tensor) -> Tensor:
        for stage in self.stages[:-1]:
            x = stage(x)[1]
        return x

    def forward_tail(self, h: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages[-1](h)[1]).flatten(1))

    def drop_trunk(self) -> "DigitsCNN":
        super().drop_trunk()
        for i in range(len(self.stages) - 1):
            self.stages[i] = nn.Identity()
        return self


@register_model("cnn_small", family="digits",
                description="digits student: 3 stages of one conv, widths 8/16/32 (~6k params)")
def cnn_small(num_classes: int = 10, in_channels: int = 1) -> DigitsCNN:
    return DigitsCNN((8, 16, 32), depth=1, num_classes=num_classes, in_channels=in_channels)


@register_model("cnn_wide", family="digits",
                description="digits teacher: 3 stages of two convs, widths 32/64/128 (~0.29M params)")
def cnn_wide(num_classes: int = 10, in_channels: int = 1) -> DigitsCNN:
    return DigitsCNN((32, 64, 128), depth=2, num_classes=num_classes, in_channels=in_channels)


@register_model("cnn_mid", family="digits",
                description="digits teacher assistant: 3 stages of one conv, widths 16/32/64 (~24k params), between "
                            "cnn_wide and cnn_small")
def cnn_mid(num_classes: int = 10, in_channels: int = 1) -> DigitsCNN:
    return DigitsCNN((16, 32, 64), depth=1, num_classes=num_classes, in_channels=in_channels)
