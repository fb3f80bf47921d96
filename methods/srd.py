"""SRD: Yang, Martinez, Bulat & Tzimiropoulos, "Knowledge Distillation via Softmax Regression
Representation Learning", ICLR 2021 (SRRL in the authors' first repository).

- Category / scheme: feature-based / offline.
- Layers: the student's last feature map before global pooling (the map whose spatial mean is its
  ``embedding``); the teacher's pooled ``embedding``, logits and frozen linear classifier (W_t, b_t).
- Connector r: 1x1 conv (no bias) + BatchNorm + ReLU from the student's channels to the teacher's
  embedding width, applied to the student's *map* before pooling (the authors' ``transfer_conv``; conv
  weights N(0, 2 / out_channels), BN 1 / 0). h_s = spatial mean of r(map_s).
- Loss: ``ce`` + ``fm`` + ``sr`` with
  ``fm = fm_weight * mean_{b,c} (h_s - h_t)^2`` (the authors' ``statm_loss``: the spatial means of
  r(map_s) and the teacher's map, squared difference averaged over channels and batch) and
  ``sr = sr_weight * mean_{b,k} (W_t h_s + b_t - z_t)^2`` (``F.mse_loss`` between the teacher's
  classifier applied to the student's feature and the teacher's logits). The teacher's map only enters
  through its spatial mean, which is exactly its embedding: the teacher's map is never read.
- Defaults: fm_weight=1, sr_weight=1, ce_weight=1: the authors' CIFAR-100 script (``--distill srd -a 0
  -b 1``: CE 1, no KD term, beta 1 on ``statm + mse``). Their default loop multiplies the feature term
  by 10 when the student is ShuffleNetV1 (``helper/loops.py:train_ssldistill``; 1 for other students;
  their ``--v2`` loop uses 10 only under ``--distill srdv2``): ``fm_weight: 10`` in the pair files
  resnet32x4-shufflenetv1 and wrn_40_2-shufflenetv1.
- Paper vs code: the paper writes L_SR as a cross-entropy -p log q between the teacher's softmax and
  the softmax of the teacher's classifier on the student's feature, and L_FM as a squared L2 norm of
  the pooled-feature difference; the released code uses the mean squared error of the *logits* for
  L_SR (also what the final abstract states: "a simple L2 loss") and a mean over channels for L_FM.
  We follow the code. The paper's connector r is "a function matching dimensions"; the code's is the
  1x1 conv-BN-ReLU on the map, before pooling (reimplementations such as SimKD's apply it to the
  pooled vector as a 1x1 map, which changes the BatchNorm statistics and the ReLU's place): we follow
  the authors' code. Their teachers pool r(map_s) globally, except their WRN, which pools with a fixed
  8x8 window (global on 8x8 maps; their code stops on a 4x4 student map such as ShuffleNetV1's): we
  pool globally everywhere, which is what their code computes wherever it runs.
- Data: SRD_ossl's scripts add unlabelled images (Tiny-ImageNet, ``--ood tin``) to each batch for its
  open-set semi-supervised study; kdbench runs the ICLR paper's supervised setting (CIFAR-100 only).
  Their schedule otherwise is the CRD benchmark's (batch 64, lr 0.05, 0.01 for MobileNetV2/ShuffleNets).
- Reading the student's map: for most kdbench models ``features[-1]`` is it; for Wide ResNets it is
  ReLU(``preact_features[-1]``) (the final BN-ReLU), and for ShuffleNetV2 and MobileNetV2 (a 1x1 conv
  after the last stage) it is read with a forward hook on the module that makes it. Which one is found
  once, by a probe forward pass, and checked (spatial mean == embedding); a model where none fits is
  refused. The authors edited each model to return this map as ``feat[-2]`` for the same purpose.
- Extra trainable parameters: the connector (conv + BN). The teacher's classifier stays frozen.
- Reported: the ICLR paper's CIFAR-100 table could not be read here; SimKD's reproduction (their README,
  CRD schedule) gives resnet32x4->resnet8x4 75.39, resnet32x4->vgg8 73.23.
- Parity fixture (tests/data/parity/srd.json): github.com/jingyang2017/SRD_ossl (the authors' CIFAR-100
  code, RepDistiller-based; the ICLR repo jingyang2017/KD_SRRL holds only the ImageNet script, with the
  same connector and loss), commit d295cd84dda3c49b9807cffcfdb394b717e6fdcb; ``distiller_zoo/AIN.py``
  (``transfer_conv``, ``statm_loss``) and the teacher's ``forward(x=None, feat_s=...)`` branch of their
  ``models/resnet.py`` and ``models/vgg.py``, combined as in ``helper/loops.py`` (``statm * k +
  F.mse_loss(logit_tc, logit_t)``), on seeded float64 maps with stored connector and classifier
  weights, BN in training mode; outputs: the connector's output, both terms, the total and the gradients
  with respect to the student's map and the connector's parameters.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Method, StepOutput, Weight, full_precision, register_method, require
from kdbench.models import KDModel, ModelOutput

Source = Literal["features", "preact_relu", "module", "module_relu"]


def _matches(pooled: Tensor, target: Tensor) -> bool:
    """Equal up to float rounding, relative to the target's scale (a fresh model's activations in eval mode
    can be ~1e-5, so an absolute tolerance would accept anything)."""
    scale = target.abs().max()
    return pooled.shape == target.shape and bool(scale > 0) and bool((pooled - target).abs().max() <= 1e-4 * scale)


@dataclass
class PooledMap:
    """Reads a model's last feature map before global average pooling: the map whose spatial mean is
    ``ModelOutput.embedding``, which CAM- and classifier-based methods need and ModelOutput does not carry.

    ``source`` says where it comes from: ``features[-1]``, ReLU of ``preact_features[-1]``, or the output
    of the module ``module`` (optionally after a ReLU), captured by a forward hook while :meth:`capture`
    is open. Found by :func:`probe`.
    """

    source: Source
    module: str = ""
    _open: bool = False
    _value: Tensor | None = None

    def attach(self, model: nn.Module) -> "PooledMap":
        """Hook the module that makes the map (where the outputs do not hold it); returns self."""
        if self.source in ("module", "module_relu"):
            model.get_submodule(self.module).register_forward_hook(self._keep)
        return self

    def _keep(self, _module: nn.Module, _inputs, output: Tensor) -> None:
        if self._open:
            self._value = output

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Around the model's forward pass whose map :meth:`read` will return."""
        self._open, self._value = True, None
        try:
            yield
        finally:
            self._open = False

    def read(self, out: ModelOutput) -> Tensor:
        if self.source == "features":
            return out.features[-1]
        if self.source == "preact_relu":
            return F.relu(out.preact_features[-1])
        value, self._value = self._value, None
        if value is None:
            raise RuntimeError(f"no output of {self.module!r} was captured: run the forward pass inside capture()")
        return F.relu(value) if self.source == "module_relu" else value


@dataclass(frozen=True)
class Probe:
    """What one probe forward pass finds in a model: its pooled map and its linear classifier."""

    pooled_map: PooledMap | None
    classifier: str | None  # the name of the nn.Linear that maps the embedding to the logits


@torch.no_grad()
def probe(model: KDModel, input_shape: tuple[int, ...], *, hooks: bool) -> Probe:
    """Find the map whose spatial mean is the embedding, and the linear layer giving the logits from it.

    One forward pass in eval mode on a seeded random batch of two (no running statistic moves, the global
    random stream is untouched). Candidates for the map, first match wins: ``features[-1]``, ReLU of
    ``preact_features[-1]``, then (``hooks=True``) the outputs of the model's modules, last produced first,
    as they are or after a ReLU. A candidate must reproduce the embedding to 1e-4 relative.
    """
    param = next(model.parameters())
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    produced: list[tuple[str, Tensor]] = []
    handles = []
    if hooks:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(
                    lambda _m, _i, o, name=name: produced.append((name, o.clone()))
                    if isinstance(o, Tensor) and o.dim() == 4 else None))
    was_training = model.training
    model.eval()
    try:
        out = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    emb = out.embedding
    found: PooledMap | None = None
    if out.features and out.features[-1].dim() == 4 and _matches(out.features[-1].mean((2, 3)), emb):
        found = PooledMap("features")
    elif out.preact_features and out.preact_features[-1].dim() == 4 and _matches(
            F.relu(out.preact_features[-1]).mean((2, 3)), emb):
        found = PooledMap("preact_relu")
    else:
        for name, value in reversed(produced):
            if _matches(value.mean((2, 3)), emb):
                found = PooledMap("module", name)
                break
            if _matches(F.relu(value).mean((2, 3)), emb):
                found = PooledMap("module_relu", name)
                break
    classifier = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.in_features == emb.shape[1] \
                and module.out_features == out.logits.shape[1] and _matches(module(emb), out.logits):
            classifier = name
    return Probe(found, classifier)


def linear_of(model: nn.Module, name: str) -> nn.Linear:
    return model.get_submodule(name)  # type: ignore[return-value]


class Connector(nn.Sequential):
    """The authors' connector: 1x1 conv (no bias), BatchNorm, ReLU, on a feature map."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
        nn.init.normal_(self[0].weight, 0.0, math.sqrt(2.0 / c_out))  # fan-out normal of a 1x1 kernel


def srd_terms(student_map: Tensor, connector: nn.Module, teacher_embedding: Tensor, teacher_logits: Tensor,
              weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """(feature-matching term, softmax-regression term), both unweighted (see the card)."""
    h_s = connector(student_map).mean((2, 3))
    fm = (h_s - teacher_embedding).pow(2).mean()
    sr = F.mse_loss(F.linear(h_s, weight, bias), teacher_logits)
    return fm, sr


@register_method("srd", category="feature", scheme="offline",
                 description="Yang et al. 2021: match the penultimate feature, also through the teacher's classifier",
                 display="SRD", order=32, paper="Yang, Martinez, Bulat & Tzimiropoulos, ICLR 2021",
                 code="github.com/jingyang2017/SRD_ossl")
class SRD(Method):
    def __init__(self, student, teacher, ctx, *, fm_weight: Weight = 1.0, sr_weight: Weight = 1.0,
                 ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        s = probe(student, ctx.student_spec.input_shape, hooks=True)
        t = probe(self.teacher.model, ctx.teacher_spec.input_shape, hooks=False)
        require(s.pooled_map is not None, f"srd reads the student's last feature map before pooling; none of "
                                          f"{ctx.student_arch}'s outputs or modules averages to its embedding")
        require(t.classifier is not None, f"srd passes the student's feature through the teacher's linear "
                                          f"classifier; {ctx.teacher_arch} has no nn.Linear from its embedding "
                                          f"to its logits")
        self.student_map = s.pooled_map.attach(student)
        self.classifier = t.classifier  # a name, so the frozen teacher's layer is never registered here
        # the map averages to the embedding, so it has the embedding's width
        self.connector = Connector(ctx.student_spec.embedding_dim, ctx.teacher_spec.embedding_dim)
        self.fm_weight, self.sr_weight, self.ce_weight = fm_weight, sr_weight, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        with self.student_map.capture():
            s_out = self.student(batch.images)
        s_map = self.student_map.read(s_out)
        fc = linear_of(self.teacher.model, self.classifier)
        with full_precision(batch.images.device):  # squared differences of logits: fp32
            fm, sr = srd_terms(s_map.float(), self.connector, t_out.embedding.float(), t_out.logits.float(),
                               fc.weight.float(), None if fc.bias is None else fc.bias.float())
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "fm": self.fm_weight * fm, "sr": self.sr_weight * sr})
