r"""ULD — universal logit distillation across tokenizers (Boizard et al., TMLR 2025).

Teacher and student may use different tokenizers and vocabularies. Both read the same
teacher-written answers, each in its own tokens; the answer positions are left-aligned from the
first answer token and cut to the shorter answer, and at each aligned position the two
next-token distributions are compared *after sorting* — the closed-form Wasserstein-1 distance
under a uniform cost, which needs no token-to-token mapping:

$$\mathcal{L} = \mathcal{L}_\mathrm{CE} + \lambda\,\frac{1}{|\mathcal{A}|}\sum_{t\in\mathcal{A}}\ \sum_i \big|\,\mathrm{sort}{\downarrow}(q_t)_i - \mathrm{sort}{\downarrow}(p_t)_i\,\big|.$$

The loss and the alignment are in `reference_impls.white_box.logits._cross_tokenizer`; this module is the recipe:
teacher-generated answers (`TeacherGenerated`), batches with both tokenizations, the embedded
student on the second embedded tokenizer (merged character pairs, ``"pair"``). Defaults are the
authors' (``Nicolas-BZRD/llm-recipes`` ``configs/distillation.py``: ``distil_factor`` 1.5,
``cross_entropy_factor`` 1, both temperatures 1). Key: ``boizard2025uld``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reference_impls.core.data_sources import TeacherGenerated
from reference_impls.core.recipe import Recipe, Students
from reference_impls.core.training import StepLoss, aligned_logits
from reference_impls.losses import hard_label_ce
from reference_impls.registry import register
from reference_impls.white_box.logits._cross_tokenizer import uld_loss


@dataclass(frozen=True)
class ULDStep(StepLoss):
    """One ULD step: cross-entropy on the student's tokens plus λ·ULD against the teacher."""

    distil_factor: float = 1.5
    cross_entropy_factor: float = 1.0
    student_temperature: float = 1.0
    teacher_temperature: float = 1.0

    def __call__(
        self, model: torch.nn.Module, teacher: Any, batch: dict[str, Tensor], vocab_size: int | None
    ) -> Tensor:
        if teacher is None:
            raise ValueError("ULD needs the teacher's logits (white-box access, any vocabulary)")
        student_logits, student_labels = aligned_logits(model, batch)
        with torch.no_grad():  # the teacher reads its own tokenization (``teacher_*`` keys)
            teacher_logits, teacher_labels = aligned_logits(teacher, batch, "teacher_")
        distance = uld_loss(
            student_logits,
            teacher_logits,
            student_labels,
            teacher_labels,
            student_temperature=self.student_temperature,
            teacher_temperature=self.teacher_temperature,
        )
        return (
            self.cross_entropy_factor * hard_label_ce(student_logits, student_labels)
            + self.distil_factor * distance
        )


@register("uld")
def uld_recipe(
    distil_factor: float = 1.5,
    cross_entropy_factor: float = 1.0,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
) -> Recipe:
    """ULD on teacher-generated answers, for a student with its own tokenizer.

    Args:
        distil_factor: λ, the weight of the ULD term (``distil_factor`` 1.5).
        cross_entropy_factor: Weight of the student's cross-entropy on the answers (1).
        student_temperature: Softmax temperature of the student before sorting (1).
        teacher_temperature: Softmax temperature of the teacher before sorting (1).
    """
    return Recipe(
        method_id="uld",
        data=TeacherGenerated(),
        loss=ULDStep(distil_factor, cross_entropy_factor, student_temperature, teacher_temperature),
        students=Students(tokenizer="pair"),  # its own tokenizer: batches carry both tokenizations
    )
