"""TAKD: Mirzadeh, Farajtabar, Li, Levine, Matsukawa & Ghasemzadeh, "Improved Knowledge Distillation via
Teacher Assistant", AAAI 2020.

- Category / scheme: response-based / offline, in a chain: teacher -> assistant(s) -> student.
- ``assistants``: architectures between the teacher and the student, teacher side first
  (``[resnet56]``; ``[a1, a2]`` is the paper's multi-step chain). Each link is KD: the first assistant
  is distilled from the pair's teacher, each next one from the previous, the student from the last.
  An assistant is a teacher like any other to kdbench: trained once by the student's schedule with
  ``teacher.seed``, cached, and identified by what made it -- its architecture, seed, schedule, link
  hyper-parameters *and its own teacher's identity* -- so a changed teacher or assistant changes the
  student's run id, and every student seed of a suite shares the one assistant.
- Loss per link: ``ce_weight * CE + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, the
  same KD as ``kd`` (batch-mean KL). The authors' code weighs (1 - lambda) CE + lambda T^2 KL with
  the element-wise mean of old ``nn.KLDivLoss()`` and searched lambda in [0.05, 1] and T in {1, 2, 5,
  10, 15, 20} per link with NNI, publishing no single value; kdbench uses the CRD benchmark's KD
  setting (T=4, 0.1/0.9) for every link, so TAKD differs from ``kd`` only by the assistant.
- Assistants per pair: each pair file names one (a zoo model between teacher and student in size,
  of the teacher's family where the zoo has one: resnet56 -> resnet32 -> resnet20, resnet110 -> resnet56 ->
  resnet20/32, resnet32x4 -> resnet20x4 -> resnet8x4, wrn_40_2 -> wrn_28_2 -> wrn_16_2, vgg13 -> vgg11 ->
  vgg8, resnet50 -> resnet18 -> ...); a pair without one is refused until ``method.assistants`` is given.
- Extra trainable parameters: none (the assistant is a teacher).
- Reported (TAKD paper Table 2, CIFAR-100; NOKD / KD -> TAKD): resnet110 -> resnet20 -> resnet8 with
  plain student resnet8 61.37, KD 61.41, TAKD 61.82; CNN 10 -> 4 -> 2 layers 44.57 / 44.92 -> 46.00.
"""
from __future__ import annotations

from typing import Annotated, ClassVar

from kdbench.methods.kd import KD

from kdbench.method import Range, Weight, register_method, require


@register_method("takd", category="response", scheme="offline",
                 description="Mirzadeh et al. 2020: KD through a chain of teacher assistants",
                 display="TAKD", order=17, paper="Mirzadeh et al., AAAI 2020",
                 code="github.com/imirzadeh/Teacher-Assistant-Knowledge-Distillation")
class TAKD(KD):
    teacher_arch: ClassVar[str] = "assistant"  # the teacher is the chain's last assistant (identity.teacher_config)

    def __init__(self, student, teacher, ctx, *, assistants: list = (),
                 temperature: Annotated[float, Range(gt=0)] = 4.0, ce_weight: Weight = 0.1,
                 kd_weight: Weight = 0.9) -> None:
        require(len(assistants) > 0, "takd needs a teacher assistant: set method.assistants=[ARCH] (architectures "
                                     "between the teacher and the student, teacher side first); this pair "
                                     "declares none")
        super().__init__(student, teacher, ctx, temperature=temperature, ce_weight=ce_weight, kd_weight=kd_weight)
        self.assistants = [str(a) for a in assistants]
