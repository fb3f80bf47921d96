"""CAT-KD: Guo, Yan, Li & Lin, "Class Attention Transfer Based Knowledge Distillation", CVPR 2023.

- Category / scheme: feature-based / offline.
- Class activation maps (CAMs): each model's linear classifier weight W (K x C, no bias) applied at
  every position of its last feature map before global pooling (the map whose spatial mean is its
  ``embedding``): CAM[k] = sum_c W[k, c] map[c], K maps per image. The teacher's W is frozen; the
  student's is its own classifier, trained by both terms.
- Loss: ``ce`` + ``cat`` = ``beta * mean (N(P(CAM_s)) - N(P(CAM_t)))^2`` where P is adaptive average
  pooling to ``cam_resolution`` x ``cam_resolution`` and N, with ``normalize=true``, scales each
  pooled CAM to unit L2 norm over its positions (``F.normalize`` over H, W); the mean runs over batch,
  classes and positions (``F.mse_loss``). Computed as W . P(map), equal to P(W . map) since pooling
  and the 1x1 product are both linear (K x C x r^2 products instead of K x C x H x W).
- Defaults: beta=400, cam_resolution=2, normalize=true, ce_weight=1: the authors' ``CFG.CAT_KD``
  (``mdistiller/engine/cfg.py``). Every CIFAR-100 pair has its own config
  (``configs/cifar100/CAT_KD/*.yaml``), set in the pair files (``pair.method_overrides.cat-kd``):
  resnet56->resnet20 beta 0.7, resnet110->resnet32 1.8, resnet32x4->resnet8x4 15, wrn_40_2->wrn_16_2 12,
  wrn_40_2->wrn_40_1 1.5, vgg13->vgg8 4.5 (these six: resolution 2, normalize false);
  vgg13->mobilenetv2 15 and resnet50->mobilenetv2 40 (resolution 2, normalize true);
  resnet32x4->shufflenetv1 600, resnet32x4->shufflenetv2 600, wrn_40_2->shufflenetv1 80 (resolution 4,
  normalize true). The authors have no config for resnet110->resnet20 and resnet50->vgg8; ours there (not
  tuned): the same teacher's config (resnet110->resnet32's, resnet50->mobilenetv2's). With the defaults on
  the digits pair the CAT term swamps CE (a 2-epoch run: 25 % test top-1); digits has no authors' value.
- Architecture (a deviation kdbench cannot avoid): the authors rebuild every network for CAT-KD
  ("_test" variants, ``if_test: True``): the classifier becomes a bias-free 1x1 conv before the global
  pooling, so a student's logits are the spatial means of its CAMs; the teacher's converted network
  drops its classifier's bias (the CAT loss never reads the teacher's logits). kdbench keeps each
  student as it is -- a linear classifier with a bias after pooling -- and takes the CAMs from that
  classifier's weight: the same CAMs and the same CAT loss, the student's logits offset by its bias.
- Reading the maps: as SRD (``kdbench show method srd``): ``features[-1]`` for most models, ReLU of
  ``preact_features[-1]`` for Wide ResNets (the teacher wrn_40_2 included), a forward hook on the 1x1
  conv for ShuffleNetV2 and MobileNetV2 students; the authors apply their conv at the same place
  (after MobileNetV2's 1280-channel conv, ShuffleNetV2's conv-BN-ReLU, WRN's BN-ReLU).
- Not implemented: the analysis variants of the authors' code (binarised CAMs, transferring only some
  classes' CAMs, "CAT" without CE -- the latter is ``method.ce_weight=0``).
- Extra trainable parameters: none (the student's classifier is the student's).
- Reported (CAT-KD paper, CIFAR-100): resnet32x4->resnet8x4 76.91, resnet32x4->shufflenetv1 78.26
  (the other pairs' values were not checked here).
- Parity fixture (tests/data/parity/cat-kd.json): github.com/GzyAftermath/CAT-KD, commit
  4467073ca31b9929e7c45f5a6761e5e1b7c9442f, ``mdistiller/distillers/CAT_KD.py``: their ``CAT_KD``
  distiller's ``forward_train`` around two stand-ins for the tail of their "_test" networks (their
  bias-free 1x1 conv holding a stored classifier weight, on a stored seeded map), float64; outputs:
  the CAT loss, the student's CAMs and the gradients with respect to the student's map and classifier
  weight. Cases: raw and normalised CAMs, resolutions 2 and 4, teacher and student maps of different
  sizes (8x8 vs 4x4, and a 2x2 map pooled up to 4x4), an odd 3x3 map, a batch of one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kdbench.methods.srd import linear_of, probe
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Count, Method, StepOutput, Weight, full_precision, register_method, require


def pooled_cams(feature_map: Tensor, weight: Tensor, resolution: int) -> Tensor:
    """The class activation maps (B, K, r, r) of ``feature_map`` (B, C, H, W) under classifier ``weight`` (K, C),
    average-pooled to r x r."""
    return torch.einsum("kc,bchw->bkhw", weight, F.adaptive_avg_pool2d(feature_map, resolution))


def cat_loss(student_cams: Tensor, teacher_cams: Tensor, normalize: bool) -> Tensor:
    """Mean squared difference of the pooled CAMs, each first scaled to unit L2 norm over its positions
    when ``normalize`` (see the card)."""
    if normalize:
        student_cams, teacher_cams = F.normalize(student_cams, dim=(2, 3)), F.normalize(teacher_cams, dim=(2, 3))
    return F.mse_loss(student_cams, teacher_cams)


@register_method("cat-kd", category="feature", scheme="offline",
                 description="Guo et al. 2023: transfer the teacher's class activation maps, pooled",
                 display="CAT-KD", order=33, paper="Guo, Yan, Li & Lin, CVPR 2023",
                 code="github.com/GzyAftermath/CAT-KD")
class CATKD(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 400.0, cam_resolution: Count = 2,
                 normalize: bool = True, ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        s = probe(student, ctx.student_spec.input_shape, hooks=True)
        t = probe(self.teacher.model, ctx.teacher_spec.input_shape, hooks=False)
        for who, found, arch in (("student", s, ctx.student_arch), ("teacher", t, ctx.teacher_arch)):
            require(found.pooled_map is not None, f"cat-kd reads the {who}'s last feature map before pooling; none "
                                                  f"of {arch}'s outputs averages to its embedding")
            require(found.classifier is not None, f"cat-kd makes class activation maps from the {who}'s linear "
                                                  f"classifier; {arch} has no nn.Linear from its embedding to its "
                                                  f"logits")
        self.student_map, self.teacher_map = s.pooled_map.attach(student), t.pooled_map
        self.student_classifier, self.teacher_classifier = s.classifier, t.classifier  # names: nothing registered
        self.beta, self.cam_resolution, self.normalize, self.ce_weight = beta, cam_resolution, normalize, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        with self.student_map.capture():
            s_out = self.student(batch.images)
        w_s = linear_of(self.student, self.student_classifier).weight
        w_t = linear_of(self.teacher.model, self.teacher_classifier).weight
        r = self.cam_resolution
        with full_precision(batch.images.device):  # normalised maps of a few values each: fp32
            cams_s = pooled_cams(self.student_map.read(s_out).float(), w_s.float(), r)
            cams_t = pooled_cams(self.teacher_map.read(t_out).float(), w_t.float(), r)
            cat = cat_loss(cams_s, cams_t, self.normalize)
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "cat": self.beta * cat})
