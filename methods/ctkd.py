"""CTKD: Li, Li, Yang, Zhao, Zhang, Zhou, Hou & Yang, "Curriculum Temperature for Knowledge Distillation", AAAI 2023.

- Category / scheme: response-based / offline.
- KD whose temperature is learned, adversarially, under a curriculum: T = t_start + t_end * sigmoid(theta)
  with one learnable theta (the authors' "global" temperature, started at 1: T = 15.6 at first); theta's
  gradient passes a reversal of strength lambda, a cosine from 0 down to -1 over the first ``loops``
  epochs (-1 after), so each SGD step on theta *raises* the KD loss: the targets get harder as the student
  learns (paper Sec. 3; ``kdbench.method.CurriculumTemperature``).
- Loss: ``ce_weight * CE + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, batch mean, the
  gradient reaching T through both the softmax and T^2 (the authors' ``DistillKL`` with a tensor T).
- This is KD with ``method.temperature_schedule=ctkd`` (the same loss, the same optimizer), registered
  under its own name so that tables and the survey's CTKD rows name it and its curriculum can be set;
  DKD takes the same modifier (their DKD+CTKD).
- Defaults (the authors' scripts/run_cifar_distill.sh and train_student.py): ce_weight 0.1 (their
  ``-r``), kd_weight 0.9 (``-a``), t_start 1, t_end 20, cosine curriculum lambda 0 -> -1 over 10 epochs.
  theta is trained by the run's optimizer with the student, weight decay included (theirs: one SGD
  over the student and the temperature module).
- Difference from the paper, following the code: the paper writes the curriculum over the whole of
  training; the code (and we) reach lambda = -1 after ``loops`` = 10 epochs. Epochs: the authors count
  from 1 (lambda of their epoch 1 is -0.0245), ours from 0, so our epoch e uses their e + 1.
- The paper also has an instance-wise temperature (a small MLP per sample); the authors' CIFAR results
  and this card's defaults are the global one; the instance-wise form is not implemented.
- DKD with the learned temperature: the authors' ``DKDloss`` gives theta a NaN gradient (its
  non-target term masks the target logit with -1000, the teacher's probability there underflows to 0,
  and the derivative of p log p in T is then 0 * log 0); ours works in log space and gives the finite
  gradient of the same loss (the fixture's theta gradients for DKD are NaN; everything else matches).
- Extra trainable parameters: 1 (theta). The record's ``method_report.final_temperature`` is the
  learned T at the end.
- Reported (CTKD README, CIFAR-100, 240 epochs; KD -> +CTKD): resnet56->resnet20 70.66 -> 71.19,
  resnet110->resnet32 73.08 -> 73.52, wrn_40_2->wrn_16_2 74.92 -> 75.45, vgg13->vgg8 72.98 -> 73.52.
- Parity fixture: tests/data/parity/ctkd.json -- zhengli97/CTKD at 7d52522: their Global_T (its gradient
  reversal), their temperature map t_start + t_end * sigmoid, their CosineDecay(0, -1, 10) and their
  DistillKL / DKDloss, run in float64 on CPU on stored logits for 1-based epochs 1, 4, 10, 25 and theta
  1 and -0.5: the temperature, the losses and the gradients reaching theta and the student's logits.
"""
from __future__ import annotations

from kdbench.methods.kd import KD

from kdbench.method import Count, CurriculumTemperature, Positive, Weight, register_method


@register_method("ctkd", category="response", scheme="offline",
                 description="Li et al. 2023: KD with a temperature learned adversarially under a curriculum",
                 display="CTKD", order=31, paper="Li et al., AAAI 2023", code="github.com/zhengli97/CTKD",
                 survey_name="")  # the survey's "ctkd" rows are collaborative teaching KD (Zhao et al. 2020), not this
class CTKD(KD):
    def __init__(self, student, teacher, ctx, *, ce_weight: Weight = 0.1, kd_weight: Weight = 0.9,
                 t_start: Positive = 1.0, t_end: Positive = 20.0, loops: Count = 10) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight)
        self.curriculum = CurriculumTemperature(t_start, t_end, loops)  # KD's temperature_schedule=ctkd, its knobs set
