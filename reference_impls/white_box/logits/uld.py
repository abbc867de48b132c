r"""ULD — universal logit distillation across tokenizers (Boizard et al., TMLR 2025).

Teacher and student may use different tokenizers and vocabularies. Both read the same
teacher-written answers, each in its own tokens; the answer positions are left-aligned from the
first answer token and cut to the shorter answer, and at each aligned position the two
next-token distributions are compared *after sorting* — the closed-form Wasserstein-1 distance
under a uniform cost, which needs no token-to-token mapping:

$$\mathcal{L} = \mathcal{L}_\mathrm{CE} + \lambda\,\frac{1}{|\mathcal{A}|}\sum_{t\in\mathcal{A}}\ \sum_i \big|\,\mathrm{sort}{\downarrow}(q_t)_i - \mathrm{sort}{\downarrow}(p_t)_i\,\big|.$$

The loss is `uld_loss` below; the alignment is shared with DSKD
(`reference_impls.white_box.logits._cross_tokenizer`). The recipe: teacher-generated answers (`TeacherGenerated`), batches with both tokenizations, the embedded
student on the second embedded tokenizer (merged character pairs, ``"pair"``). Defaults are the
authors' (``Nicolas-BZRD/llm-recipes`` ``configs/distillation.py``: ``distil_factor`` 1.5,
``cross_entropy_factor`` 1, both temperatures 1). Key: ``boizard2025uld``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reference_impls.core.data_sources import TeacherGenerated
from reference_impls.core.recipe import Recipe, Students
from reference_impls.core.training import StepLoss, aligned_logits
from reference_impls.losses import IGNORE_INDEX, Reduction, hard_label_ce
from reference_impls.losses.numerics import finite_log_softmax, reduce_positions, upcast
from reference_impls.registry import register
from reference_impls.white_box.logits._cross_tokenizer import align_response_starts

# --- the loss --------------------------------------------------------------------------------------


def _sorted_probs(logits: Tensor, temperature: float) -> Tensor:
    # -inf entries (masked vocabulary) get probability exactly 0 and no NaN, as in losses.py.
    return finite_log_softmax(upcast(logits) / temperature).exp().sort(dim=-1, descending=True).values


def uld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_labels: Tensor,
    teacher_labels: Tensor,
    *,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    skip_student_eos: bool = False,
    skip_teacher_eos: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    r"""Universal Logit Distillation: L1 distance between sorted next-token distributions.

    At each aligned response position $t$ (see `align_response_starts`),

    $$\mathrm{ULD}_t = \sum_{i=1}^{|V|} \big|\tilde q_t(i) - \tilde p_t(i)\big|,$$

    where $\tilde q_t$, $\tilde p_t$ are $\mathrm{softmax}(z_s/T_s)$ and $\mathrm{softmax}(z_t/T_t)$
    sorted in decreasing order, the smaller vocabulary padded with zeros to
    $|V| = \max(|V_s|, |V_t|)$. With a transport cost of 1 between any two distinct tokens and no
    known token mapping, this is the paper's closed form of the Wasserstein-1 distance; it ignores
    which token carries which probability (invariant to permuting either vocabulary).

    Verified against llm-recipes `models/distillation_model.py::DistillationLoss` (Nicolas-BZRD
    @8e69e7a: separate temperatures, default 1 in `configs/distillation.py`; descending sort;
    zero padding; left alignment at the answer start; `min` of the two answer sizes) and DSKD
    `code/criterions/universal_logit_distillation.py`. Differences, on purpose: positions are
    reduced by the per-token mean over all aligned pairs of the batch (llm-recipes averages per
    sequence, then over sequences; DSKD sums and divides by the student token count). The paper's
    objective adds this to cross-entropy: $\mathcal{L}_{CE} + \lambda\,\mathrm{ULD}$ with
    $\lambda$ = `distil_factor` = 1.5 (llm-recipes `configs/distillation.py`). Paper: `boizard2025uld`.

    Args:
        student_logits: `[batch, S, V_s]` student logits (gradients flow here).
        teacher_logits: `[batch, T, V_t]` teacher logits (detached inside); `V_t` may differ.
        student_labels: `[batch, S]` student labels aligned with its logits; `-100` ignored.
        teacher_labels: `[batch, T]` teacher labels aligned with its logits; `-100` ignored.
        student_temperature: $T_s > 0$.
        teacher_temperature: $T_t > 0$.
        skip_student_eos: drop the student's last response position (its EOS label).
        skip_teacher_eos: drop the teacher's last response position.
        reduction: `"mean"` over aligned pairs, `"sum"`, or `"none"` (`[batch, L]`, 0 where unpaired).
        num_items_in_batch: if given, the sum is divided by it (aligned pairs in the whole
            accumulated batch).

    Returns:
        A scalar (float32, or float64 for float64 inputs), or `[batch, L]` for `"none"`.

    Raises:
        ValueError: logits are not `[batch, seq, V]`, labels do not match them, or a temperature is not > 0.
    """
    for name, logits, labels in (
        ("student", student_logits, student_labels),
        ("teacher", teacher_logits, teacher_labels),
    ):
        if logits.dim() != 3 or labels.shape != logits.shape[:2]:
            raise ValueError(
                f"{name} logits must be [batch, seq, vocab] with labels [batch, seq]; got "
                f"{tuple(logits.shape)} and {tuple(labels.shape)} (shift before calling: logits[:, :-1], labels[:, 1:])"
            )
    for name, value in (
        ("student_temperature", student_temperature),
        ("teacher_temperature", teacher_temperature),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")

    alignment = align_response_starts(
        student_labels, teacher_labels, skip_student_eos=skip_student_eos, skip_teacher_eos=skip_teacher_eos
    )
    rows = torch.arange(student_logits.shape[0], device=student_logits.device).unsqueeze(1)
    # Only the aligned positions are softmaxed and sorted: the cost is O(L |V| log |V|).
    student = _sorted_probs(student_logits[rows, alignment.student_positions], student_temperature)
    teacher = _sorted_probs(teacher_logits.detach()[rows, alignment.teacher_positions], teacher_temperature)
    gap = student.shape[-1] - teacher.shape[-1]
    student = nn.functional.pad(student, (0, max(-gap, 0)))
    teacher = nn.functional.pad(teacher, (0, max(gap, 0))).to(student.dtype)
    per_position = (student - teacher).abs().sum(-1)
    pair_labels = torch.where(alignment.mask, 0, IGNORE_INDEX)
    return reduce_positions(per_position, pair_labels, reduction, num_items_in_batch)


# --- the recipe ------------------------------------------------------------------------------------


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
