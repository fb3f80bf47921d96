"""Trainable helpers that methods build from feature metadata before training.

These mirror the shapes used by the CRD benchmark's code: a convolutional
regressor for hints (FitNets; also AB, FT) and a linear embedding with L2
normalisation (CRD).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.errors import KDBenchError
from kdbench.models import StageSpec


class ConvRegressor(nn.Module):
    """Map a student feature map onto a teacher's shape: conv (or transposed conv), BN, ReLU.

    Spatial sizes: student 2x larger -> stride-2 3x3 conv; 2x smaller ->
    stride-2 transposed 4x4 conv; otherwise a valid conv of size (1 + s - t).
    """

    def __init__(self, s: StageSpec, t: StageSpec, relu: bool = True) -> None:
        super().__init__()
        if s.height == 2 * t.height:
            self.conv = nn.Conv2d(s.channels, t.channels, 3, stride=2, padding=1)
        elif 2 * s.height == t.height:
            self.conv = nn.ConvTranspose2d(s.channels, t.channels, 4, stride=2, padding=1)
        elif s.height >= t.height:
            self.conv = nn.Conv2d(s.channels, t.channels, (1 + s.height - t.height, 1 + s.width - t.width))
        else:
            raise KDBenchError(f"cannot regress a {s.height}x{s.width} student feature onto a "
                               f"{t.height}x{t.width} teacher feature")
        self.bn = nn.BatchNorm2d(t.channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class L2Embed(nn.Module):
    """Linear projection followed by L2 normalisation (CRD's embedding head)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)
