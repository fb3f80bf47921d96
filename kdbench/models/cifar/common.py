"""Initialisation and forward helpers shared by the CIFAR families."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import KDModel, ModelOutput  # noqa: F401  (re-exported for the families)


def _he_fan_out(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _normal_fan_out(module: nn.Module, linear_std: float | None = None) -> None:
    """Init of the benchmark's WRN/VGG/MobileNetV2: N(0, sqrt(2/(k*k*out))) convs."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                m.weight.data.normal_(0, linear_std)
            m.bias.data.zero_()


def _pool(x: Tensor) -> Tensor:
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _run_stages(stages, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Run blocks whose last one returns (out, preact); collect both per stage."""
    feats, pres = [], []
    for stage in stages:
        for block in stage[:-1]:
            x = block(x)
        x, pre = stage[-1](x, with_preact=True)
        feats.append(x)
        pres.append(pre)
    return x, feats, pres
