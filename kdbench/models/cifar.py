"""The CIFAR model zoo of the CRD benchmark (Tian et al., ICLR 2020).

Parameter names and shapes follow the benchmark's released code
(RepDistiller), so the community's CIFAR-100 teacher checkpoints load with
``strict=True``. Features follow its indexing too: ``features[0]`` is the stem
output and ``features[1:]`` the stages; ``embedding`` is the pooled vector
before the classifier. ``preact_features`` are the stage outputs before their
final ReLU, as the benchmark's ``preact=True`` returns them.

Where the benchmark code has a side effect we do not copy it: its WRN applies
the next BatchNorm module to build pre-activation features, which updates
that layer's running statistics a second time per step; we compute the same
values with batch statistics through ``F.batch_norm`` without touching them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import KDModel, ModelOutput
from .registry import register_model


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


# --------------------------------------------------------------------------------
# ResNet for CIFAR (resnet8 ... resnet110, resnet8x4, resnet32x4)
# --------------------------------------------------------------------------------

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


def _resnet(depth: int, widths=(16, 16, 32, 64)):
    def make(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes, in_channels)

    return make


for _d in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_d}", family="cifar",
                   description=f"CIFAR ResNet-{_d} (widths 16/32/64), CRD benchmark")(_resnet(_d))
register_model("resnet8x4", family="cifar",
               description="CIFAR ResNet-8 with 4x width (32/64/128/256), CRD benchmark",
               )(_resnet(8, (32, 64, 128, 256)))
register_model("resnet32x4", family="cifar",
               description="CIFAR ResNet-32 with 4x width (32/64/128/256), CRD benchmark",
               )(_resnet(32, (32, 64, 128, 256)))


# --------------------------------------------------------------------------------
# Wide ResNet (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2)
# --------------------------------------------------------------------------------

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


for _d, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register_model(f"wrn_{_d}_{_k}", family="cifar", description=f"Wide ResNet-{_d}-{_k}, CRD benchmark")(
        (lambda d, k: lambda num_classes=100, in_channels=3: WideResNet(d, k, num_classes, in_channels))(_d, _k))


# --------------------------------------------------------------------------------
# VGG with BatchNorm (vgg8, vgg11, vgg13, vgg16, vgg19); no FC layers but the classifier
# --------------------------------------------------------------------------------

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


for _d in _VGG_CFG:
    register_model(f"vgg{_d}", family="cifar", description=f"VGG-{_d} with BatchNorm (CIFAR), CRD benchmark")(
        (lambda d: lambda num_classes=100, in_channels=3: VGG(d, num_classes, in_channels))(_d))


# --------------------------------------------------------------------------------
# MobileNetV2 (width 0.5, expansion 6: the benchmark's "mobile_half")
# --------------------------------------------------------------------------------

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
        # The stages end in a linear bottleneck (no ReLU): there is no separate pre-activation.
        return ModelOutput(self.classifier(emb), feats, emb, None)


@register_model("mobilenetv2", family="cifar",
                description="MobileNetV2 for CIFAR, width 0.5, expansion 6 (the benchmark's mobile_half)")
def mobilenetv2(num_classes: int = 100, in_channels: int = 3) -> MobileNetV2:
    return MobileNetV2(6, 0.5, num_classes, in_channels)


# --------------------------------------------------------------------------------
# ShuffleNetV1 (g=3) and ShuffleNetV2 (1x)
# --------------------------------------------------------------------------------

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


@register_model("shufflenetv2", family="cifar", description="ShuffleNetV2 1x for CIFAR, CRD benchmark")
def shufflenetv2(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)


# --------------------------------------------------------------------------------
# ResNet-18/34/50 with a CIFAR stem (3x3 conv, no max-pool)
# --------------------------------------------------------------------------------

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


for _name, _block, _n in (("resnet18", _TvBasic, (2, 2, 2, 2)), ("resnet34", _TvBasic, (3, 4, 6, 3)),
                          ("resnet50", _TvBottleneck, (3, 4, 6, 3))):
    register_model(_name, family="cifar",
                   description=f"ResNet-{_name[6:]} with a CIFAR stem (3x3 conv, no max-pool), CRD benchmark")(
        (lambda b, n: lambda num_classes=100, in_channels=3: CifarStemResNet(b, n, num_classes, in_channels))(
            _block, _n))
