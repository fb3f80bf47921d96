"""OFD: Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.

- Category / scheme: feature-based / offline.
- Position: the stage outputs before their last ReLU (``preact_features[1:]``, stem excluded), of
  student and teacher, paired from the deepest stage up (n = the smaller of the two stage counts;
  3 or 4 on every CIFAR-100 pair, equal on both sides).
- Teacher transform, margin ReLU: ``max(t, m_c)`` per channel c. m_c = E[x | x < 0] for
  x ~ N(beta_c, gamma_c^2), the distribution of the BatchNorm output that feeds the stage's last
  ReLU (gamma, beta: that BatchNorm's affine weight and bias; its running statistics play no
  part): m = beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|), or -3 |gamma| where
  Phi(-beta/|gamma|) <= 0.001 (the authors' ``get_margin_from_BN``), computed in float64 and
  rounded once to float32 as theirs. In residual blocks the stage's pre-activation is that
  BatchNorm's output plus the shortcut, and the margin still comes from the BatchNorm alone (the
  authors' ResNet/PyramidNet, mdistiller's every ResNet). The BatchNorms per family mirror the
  authors' and mdistiller's ``get_bn_before_relu``: CIFAR ResNets ``layerK[-1].bn2`` (``bn3`` in
  bottlenecks), WRN ``block2.layer[0].bn1``, ``block3.layer[0].bn1``, ``bn1``, VGG each block's
  last layer, MobileNetV2 the last block's projection BN of each stage group. Ours only (neither
  reference supports them as teachers): ShuffleNetV1 ``layerK[-1].bn3``; ShuffleNetV2 the same for
  its second half of channels, its pass-through first half (already past a ReLU, >= 0) getting
  margin 0 -- any margin <= 0 gives the same loss there; the digits CNNs each stage's last BN. A
  plug-in model may provide ``bn_before_relu()`` (one BatchNorm per stage after the stem). A zero
  gamma (the authors' code divides by it) gets the limit, min(beta, 0).
- Student transform: a connector per level, 1x1 conv (no bias) to the teacher's channels + BN,
  conv weights N(0, 2 / C_teacher), BN weight 1, bias 0 (the authors' ``build_feature_connector``).
- Distance, partial L2: with t' = max(t, m), sum over every element of (s - t')^2 where s > t' or
  t' > 0 -- a student value below a negative teacher target is not penalised. (The authors' later
  commit 76344a8 writes it this way; their first release 93bbcd2 spelled out three cases: the
  same values for margins <= 0, which these always are; the fixture checks both.)
- Loss: ``ce`` + ``ofd`` = ``weight * sum_i d_i / 2^(n-1-i) / B``: level i of n from shallow
  (i = 0) to deep, d_i its partial L2 summed over batch, channels and positions, B the batch size;
  weight = 1/1000 (authors' CIFAR-100 ``train_with_distillation.py``: CE + loss / batch / 1000;
  their ImageNet script divides by 10,000, the segmentation one multiplies by 1e-5). mdistiller's
  ``FEAT_WEIGHT = 0.001`` times a loss averaged over the batch is the same number.
- Teacher BatchNorm: ``teacher_bn=batch`` (default) normalises the teacher with each batch's own
  statistics, as the authors' scripts do by putting the teacher in training mode (CIFAR, ImageNet
  and segmentation alike; in their issue #37 the first author cites the paper's Table 8, where
  this did better than inference mode; mdistiller's OFD also leaves its teacher in training mode).
  A private copy of the unfolded teacher is run for it, its running statistics never updated (the
  authors' drift, unused by their loss). ``running``: the engine's frozen teacher in eval mode.
- Spatial sizes: where a level's maps differ (resnet32x4 and wrn_40_2 -> ShuffleNets and resnet50 ->
  mobilenetv2 at every level, resnet50 -> vgg8 at all but the deepest, vgg13 -> mobilenetv2 at the
  deepest; the student's map is then half the teacher's) the larger is average-pooled to the
  smaller (``match_sizes``), after the connector. The authors had no such pair (theirs agree in
  size); mdistiller pools the teacher to the student's size, the same thing on every CIFAR-100
  pair. Channels always go through the connector, equal or not.
- Paper and code: they agree on the position, the margin ReLU, the partial L2 and the connector;
  the level weights 1/2^(n-1-i), the division by the batch size and the weight 1/1000 are the
  code's, as is taking a residual stage's margin from its last BatchNorm alone; the teacher in
  training mode is the code's, and the paper's Table 8 compares it with inference mode. We follow
  the code throughout.
- mdistiller (a08d46f, ``mdistiller/distillers/OFD.py``, the second reference) computes the same
  margins, connectors and weights, with these differences: it pairs ``preact_feats[1:]`` from the
  deepest stage up as we do but indexes the margins from the shallowest (the two agree whenever
  the stage counts are equal, as on every CIFAR-100 pair); it pools the teacher's map to the
  student's size; its ShuffleNets cannot be OFD teachers.
- Deviations: the authors trained 200 epochs, batch 128, lr 0.1, Nesterov, and mdistiller 240 epochs
  at lr 0.05 batch 64; kdbench runs every method on the common schedule. Their teacher's running
  statistics drift during distillation; ours stay put (the loss is the same).
- BatchNorm folding (``engine.fold_teacher_bn``): the margins and the batch-statistics teacher are
  taken from the teacher when the method is built, which in a run is before the engine folds the
  teacher's BatchNorms into its convolutions, so they are the unfolded teacher's. A teacher whose
  BatchNorms are already folded when OFD is built (a cohort's shared teacher, folded by an earlier
  member) no longer has them: OFD refuses it rather than guess.
- Defaults: weight=0.001, ce_weight=1, teacher_bn=batch. No per-pair settings: the authors have one
  CIFAR-100 weight for all their pairs, mdistiller one for all CRD pairs.
- Extra trainable parameters: the connectors.
- Reported: the authors (README, CIFAR-100 top-1 error, 200 epochs): WRN28-4 -> WRN16-4 20.89,
  -> WRN28-2 21.98, -> WRN16-2 24.08, -> ResNet56 24.44; PyramidNet-200 -> WRN28-4 17.80,
  -> PyramidNet-110 18.89. (Numbers on the CRD pairs circulate from later papers' reimplementations;
  none was checked against its source here, so none is quoted.)
- Parity fixture (``tests/data/parity/ofd.json``): clovaai/overhaul-distillation at 76344a8
  (``CIFAR-100/distiller.py``: ``Distiller``, ``get_margin_from_BN``, ``distillation_loss``, and
  the first release's ``distillation_loss`` from 93bbcd2), run on stored float64 features through
  stub networks exposing the stored BatchNorms; the training term is the script's
  ``loss_distill.sum() / batch_size / 1000``. One case runs mdistiller's ``OFD.ofd_loss`` (a08d46f)
  on a teacher twice the student's size.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Method, StepOutput, Weight, full_precision, match_sizes, register_method, require
from kdbench.models import ModelOutput
from kdbench.models.cifar.mobilenetv2 import MobileNetV2
from kdbench.models.cifar.resnet import CifarResNet
from kdbench.models.cifar.resnet_cifar_stem import CifarStemResNet
from kdbench.models.cifar.shufflenet import ShuffleNetV1, ShuffleNetV2
from kdbench.models.cifar.vgg import VGG
from kdbench.models.cifar.wrn import WideResNet
from kdbench.models.digits import DigitsCNN
from kdbench.training.frozen_teacher import FrozenTeacher

#: below this probability of a negative pre-activation the margin is -3 |gamma| (the authors' cut-off)
TAIL_CUTOFF = 1e-3


def bn_margin(weight: Tensor, bias: Tensor) -> Tensor:
    """Per-channel margin E[x | x < 0], x ~ N(bias, weight^2): float64 arithmetic, float32 result."""
    s, m = weight.detach().double().abs(), bias.detach().double()
    z = m / s
    tail = torch.special.ndtr(-z)  # P(x < 0)
    expected = m - s * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) / tail
    margin = torch.where(tail > TAIL_CUTOFF, expected, -3 * s)
    return torch.where(s == 0, m.clamp(max=0), margin).float()


def partial_l2(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """Summed partial L2 between the transformed student and the margin-ReLU'd teacher."""
    target = torch.maximum(target, margin)
    keep = (source > target) | (target > 0)
    return ((source - target).pow(2) * keep).sum()


def ofd_distance(student: list[Tensor], teacher: list[Tensor], margins: list[Tensor]) -> Tensor:
    """sum_i partial_l2_i / 2^(n-1-i), shallow (i = 0) to deep; not yet divided by the batch size."""
    n = len(student)
    total: Tensor | float = 0.0
    for i, (s, t, m) in enumerate(zip(student, teacher, margins)):
        s, t = match_sizes(s, t)
        total = total + partial_l2(s, t, m.reshape(1, -1, 1, 1).to(s.dtype)) / 2 ** (n - 1 - i)
    return total  # type: ignore[return-value]


def connector(s_channels: int, t_channels: int) -> nn.Sequential:
    """1x1 conv + BN from the student's channels to the teacher's, with the authors' initialisation."""
    conv = nn.Conv2d(s_channels, t_channels, 1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t_channels))
    return nn.Sequential(conv, nn.BatchNorm2d(t_channels))  # BN weight 1, bias 0: PyTorch's own init


def bn_before_relu(model: nn.Module) -> list[list[nn.Module | int]] | None:
    """Per stage after the stem (``preact_features[1:]``): where its channels come from, in order -- the
    module at the place of the BatchNorm whose output the stage's last ReLU reads, or a count of
    channels that bypass it (ShuffleNetV2's pass-through half). None for a family we do not know."""
    if callable(getattr(model, "bn_before_relu", None)):
        return [[bn] for bn in model.bn_before_relu()]
    if isinstance(model, CifarResNet):
        return [[layer[-1].bn2] for layer in (model.layer1, model.layer2, model.layer3)]
    if isinstance(model, CifarStemResNet):
        layers = (model.layer1, model.layer2, model.layer3, model.layer4)
        return [[layer[-1].bn3 if hasattr(layer[-1], "bn3") else layer[-1].bn2] for layer in layers]
    if isinstance(model, WideResNet):
        return [[model.block2.layer[0].bn1], [model.block3.layer[0].bn1], [model.bn1]]
    if isinstance(model, VGG):
        return [[getattr(model, f"block{i}")[-1]] for i in range(1, 5)]
    if isinstance(model, MobileNetV2):
        return [[model.blocks[i][-1].conv[-1]] for i in model.FEATURE_AFTER]
    if isinstance(model, ShuffleNetV1):
        return [[layer[-1].bn3] for layer in (model.layer1, model.layer2, model.layer3)]
    if isinstance(model, ShuffleNetV2):
        return [[layer[-1].bn3.num_features, layer[-1].bn3] for layer in (model.layer1, model.layer2, model.layer3)]
    if isinstance(model, DigitsCNN):
        return [[stage.body[-1]] for stage in model.stages[1:]]
    return None


def teacher_margins(model: nn.Module, arch: str | None = None) -> list[Tensor]:
    """One float32 margin vector per teacher stage after the stem; refuses (KDBenchError) a teacher whose
    BatchNorms are unknown or already folded into its convolutions."""
    parts = bn_before_relu(model)
    require(parts is not None, f"ofd takes its margins from the BatchNorm before each stage's last ReLU of the "
                               f"teacher, and does not know where those are in {arch or type(model).__name__}")
    margins = []
    for stage in parts:  # type: ignore[union-attr]
        pieces = []
        for p in stage:
            if isinstance(p, int):
                pieces.append(torch.zeros(p))
                continue
            require(not isinstance(p, nn.BatchNorm2d) or p.affine,
                    f"ofd takes its margins from the affine weight and bias of the teacher's BatchNorms; "
                    f"{arch or type(model).__name__} has one without them")
            require(isinstance(p, nn.BatchNorm2d),
                    f"ofd takes its margins from the teacher's BatchNorms, but {arch or type(model).__name__}'s were "
                    f"folded into its convolutions before ofd was built (a teacher shared by a cohort is folded "
                    f"by its first member): run ofd on its own or with engine.fold_teacher_bn=false")
            pieces.append(bn_margin(p.weight, p.bias).cpu())
        margins.append(torch.cat(pieces))
    return margins


def _uncompiled_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without the compiled forward a shared teacher may carry (runs eagerly)."""
    compiled = model.__dict__.pop("_compiled_call_impl", None)  # set on the instance by nn.Module.compile()
    try:
        return copy.deepcopy(model)
    finally:
        if compiled is not None:
            model.__dict__["_compiled_call_impl"] = compiled


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Every BatchNorm of ``model`` normalises with the batch's statistics and leaves its running ones alone."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in bns]
    for m in bns:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(bns, saved):
            m.training, m.track_running_stats = training, track


@register_method("ofd", category="feature", scheme="offline",
                 description="Heo et al. 2019: partial L2 to margin-ReLU'd teacher pre-activations",
                 display="OFD", order=26, paper="Heo et al., ICCV 2019",
                 code="github.com/clovaai/overhaul-distillation")
class OFD(Method):
    #: the method reads the teacher's BatchNorm layers when it is built (margins, the batch-statistics copy)
    reads_teacher_batchnorm: ClassVar[bool] = True

    def __init__(self, student, teacher, ctx, *, weight: Weight = 1e-3, ce_weight: Weight = 1.0,
                 teacher_bn: Literal["batch", "running"] = "batch") -> None:
        super().__init__(student, teacher, ctx)
        ss, ts = ctx.student_spec, ctx.teacher_spec
        lacking = ctx.student_arch if not ss.has_preact else ctx.teacher_arch
        require(ss.has_preact and ts.has_preact, f"ofd reads pre-activation features, which {lacking} does not expose")
        n = min(len(ss.stages), len(ts.stages)) - 1
        require(n >= 1, "ofd needs at least one stage beyond the stem on both models")
        model = self.teacher.model
        margins = teacher_margins(model, ctx.teacher_arch)[-n:]
        t_stages, s_stages = ts.stages[1:][-n:], ss.stages[1:][-n:]
        require(len(margins) == n and all(m.numel() == t.channels for m, t in zip(margins, t_stages)),
                f"ofd found margins for {[m.numel() for m in margins]} channels, but the teacher's stages have "
                f"{[t.channels for t in t_stages]}")
        self.connectors = nn.ModuleList(connector(s.channels, t.channels) for s, t in zip(s_stages, t_stages))
        for i, m in enumerate(margins):  # a function of the teacher, rebuilt with the method: not checkpointed
            self.register_buffer(f"margin{i}", m.reshape(1, -1, 1, 1), persistent=False)
        # the teacher of the authors' scripts, in training mode: a private copy, since the engine's teacher
        # may be folded, compiled or shared; frozen, so it is never trained or checkpointed
        self.batch_teacher: FrozenTeacher | None = None
        if teacher_bn == "batch":
            require(not self.teacher.folded, f"ofd's teacher_bn=batch normalises the teacher with batch "
                                             f"statistics, but {ctx.teacher_arch}'s BatchNorms were already folded "
                                             f"(a cohort's shared teacher): run ofd on its own or with "
                                             f"engine.fold_teacher_bn=false")
            self.batch_teacher = FrozenTeacher(_uncompiled_copy(model))
        self.weight, self.ce_weight, self.teacher_bn = weight, ce_weight, teacher_bn

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{i}") for i in range(len(self.connectors))]

    def teacher_features(self, x: Tensor) -> ModelOutput:
        """The teacher's outputs: with batch statistics (``teacher_bn=batch``) or the engine's frozen teacher."""
        if self.batch_teacher is None:
            return self.teacher_forward(x)
        with batch_statistics(self.batch_teacher.model):
            return self.batch_teacher(x)

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_features(batch.images)
        s_out = self.student(batch.images)
        n = len(self.connectors)
        s_feats = [c(f) for c, f in zip(self.connectors, s_out.preact_features[1:][-n:])]
        t_feats = t_out.preact_features[1:][-n:]
        with full_precision(batch.images.device):  # sums of squares over every element: fp32
            d = ofd_distance([f.float() for f in s_feats], [f.float() for f in t_feats], self.margins())
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "ofd": self.weight * d / batch.images.shape[0]})
