"""ICKD: Liu et al., "Exploring Inter-Channel Correlation for Diversity-Preserved Knowledge Distillation",
ICCV 2021.

- Category / scheme: feature-based / offline.
- Idea: the student mimics how the teacher's channels correlate with one another (which channels are
  homologous, which diverse), not the feature values themselves; the correlation of C channels is a C x C
  matrix whatever the spatial grid, so student and teacher grids need not match.
- Layer: the last stage's output of both models (``features[-1]``, post-activation): the authors'
  ``feat[-2]`` of the CRD benchmark's feature list, whose last entry is the pooled vector.
- Connector (trainable): a 1x1 convolution without bias from the student's to the teacher's channel count,
  then BatchNorm (PyTorch's default initialisation), applied to the student's map only.
- Correlation: for a map flattened to F (B, C, H*W), G = F F^T (B, C, C), not divided by H*W; each row of G
  is then L2-normalised (``F.normalize``, eps 1e-12, so an all-zero channel gives a zero row).
- Loss: ``ce`` (``ce_weight * CE``) + ``kd`` (``kd_weight * T^2 * KL``, T=4, batch mean) + ``ickd`` =
  ``beta * sum_{b,i,j} (G_s - G_t)^2 / (B * C_t)``: summed over both channel axes, divided by the teacher's
  channel count once (not C^2) and by the batch, as the authors' CIFAR code reduces it. Each row differs by
  at most 2 in norm, so the term lies in [0, 4] for any C.
- Defaults: beta=2.5, kd_weight=1, T=4, ce_weight=1: the authors' CIFAR-100 command for their headline
  row "ICKD-C (Ours)" (``Cifar100/README.md`` and ``scripts/run_cifar_distill.sh``: ``-a 1 -b 2.5``, with
  RepDistiller's ``-r 1`` and ``--kd_T 4``). Their "ICKD-C (w/o KL)" row is ``method.kd_weight=0``
  (``-a 0 -b 2.5``). Their ``train_student.sh`` at the same commit launches ``-a 0 -b 4`` (with a
  commented ``-a 2 -b 4``): a local launch script, not the documented setting; we keep 2.5. The same
  values for every pair: the authors give no per-pair settings.
- Paper / code differences, and what we follow (the authors' CIFAR code throughout):
  - Reduction: the CIFAR code divides the summed squared differences by B * C; their ImageNet code
    (torchdistill-based ``ChSimLoss``, and torchdistill's port of it) by B^2 * C, with a 3x3 embedding
    convolution and weight 500. These are the ImageNet recipe; on CIFAR we follow the CIFAR code.
  - Their CIFAR code also builds a second embedding (``embed_t``) and hands it to the optimizer, but never
    applies it (a commit "fix the random seed" re-added it, apparently to restore the random stream of
    their runs); it receives no gradient, so SGD leaves it untouched. We do not build it.
  - The teacher's map enters as it is (no connector), as in their code.
- Precision: the connector, correlations and loss run in fp32 under bf16 autocast: the loss compares
  normalised correlations that a 3-digit format would blur.
- Cost: three B x C_t x C_t tensors in the graph; for a ResNet-50 teacher (C_t = 2048) at batch 64 that is
  about 1 GiB each in fp32.
- Extra trainable parameters: the connector, C_s * C_t + 2 * C_t.
- Reported (authors' README, CIFAR-100, CRD benchmark teachers and schedule), ICKD-C with KL / without:
  wrn_40_2->wrn_16_2 75.57 / 75.64, wrn_40_2->wrn_40_1 74.63 / 74.33, resnet56->resnet20 71.69 / 71.76,
  resnet110->resnet20 71.91 / 71.68, resnet110->resnet32 74.11 / 73.89, resnet32x4->resnet8x4 75.48 / 75.25,
  vgg13->vgg8 73.88 / 73.42. ImageNet (their README, resnet34->resnet18): 72.16.
- Parity fixture (``tests/data/parity/ickd.json``): ADLab-AutoDrive/ICKD at
  403b8d3d7c3aaa429e4708870d2be1d4daf92f07, ``Cifar100/distiller_zoo/ICKD.py:ICKDLoss`` built as their
  ``train_student.py`` builds it, in float64 and train mode, with its embedding's weights set to stored
  values, on fixed maps: 8 -> 16 channels on a 4x4 grid, a 4x4 student against a 2x2 teacher, and a teacher
  with an all-zero channel. Stored: the loss, the gradients w.r.t. the student's map and the embedding's
  parameters, and the BatchNorm running statistics after the step. Nothing was stubbed.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Method, Positive, StepOutput, Weight, full_precision, register_method, require, soft_kl


class ChannelEmbed(nn.Module):
    """1x1 convolution (no bias) to the teacher's channel count, then BatchNorm: the authors' connector."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


def channel_correlation(f: Tensor) -> Tensor:
    """Row-normalised inter-channel Gram matrices (B, C, C) of maps (B, C, H, W)."""
    flat = f.flatten(2)
    return F.normalize(flat @ flat.transpose(1, 2), dim=2)


def ickd_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Squared difference of the correlations, summed, over B * C (f_s already embedded to f_t's channels)."""
    b, c = f_t.shape[:2]
    return (channel_correlation(f_s) - channel_correlation(f_t)).pow(2).sum() / (b * c)


@register_method("ickd", category="feature", scheme="offline",
                 description="Liu et al. 2021: match the inter-channel correlation of the last stage's features",
                 display="ICKD", order=30, paper="Liu et al., ICCV 2021", code="github.com/ADLab-AutoDrive/ICKD")
class ICKD(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 2.5, kd_weight: Weight = 1.0,
                 temperature: Positive = 4.0, ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        s, t = ctx.student_spec.stages, ctx.teacher_spec.stages
        require(len(s) > 0 and len(t) > 0, "ickd needs a stage feature map on both models")
        self.embed = ChannelEmbed(s[-1].channels, t[-1].channels)
        self.beta, self.kd_weight, self.temperature, self.ce_weight = beta, kd_weight, temperature, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        with full_precision(batch.images.device):  # normalised correlations compared: fp32
            loss = ickd_loss(self.embed(s_out.features[-1].float()), t_out.features[-1].float())
        losses = {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels), "ickd": self.beta * loss}
        if self.kd_weight:
            losses["kd"] = self.kd_weight * soft_kl(s_out.logits, t_out.logits.float(), self.temperature)
        return StepOutput(s_out.logits, losses)
