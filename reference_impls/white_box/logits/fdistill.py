r"""f-DISTILL (Wen et al., ACL 2023): sequence-level f-divergence distillation, step by step.

A sequence-level divergence between the teacher's and the student's distributions over whole
responses has no closed form, but for these f-divergences it decomposes into per-token terms on
*sampled* sequences — teacher samples for the part weighted by the teacher, student samples for
the part weighted by the student (§3.2 of the paper; $m = \tfrac12(p+q)$):

| divergence | on teacher samples | on student samples |
|---|---|---|
| KL | $\sum_t \mathrm{KL}(p_t\,\|\,q_t)$ | — |
| reverse KL | — | $\sum_t \mathrm{KL}(q_t\,\|\,p_t)$ |
| JS | $\tfrac12\sum_t \mathrm{KL}(p_t\,\|\,m_t)$ | $\tfrac12\sum_t \mathrm{KL}(q_t\,\|\,m_t)$ |
| TVD (upper bound) | $\tfrac14\sum_t\sum_v \lvert q_t - p_t\rvert$ | $\tfrac14\sum_t\sum_v \lvert q_t - p_t\rvert$ |

(The paper writes the JS teacher term as $\sum_v -p\log m$; it differs from $\mathrm{KL}(p\,\|\,m)$
by the teacher's entropy, a constant, so the gradient is the same.) The teacher samples are drawn
**once, offline**, and kept (the paper's efficiency trick, §3.3); the student is re-sampled online
at every step. Token terms are averaged over response tokens, as everywhere in kdatlas.

The divergence is the only hyper-parameter; the paper reports TVD and JS best on most tasks
(Table 2) and has no single default — kdatlas uses ``tvd``, the method the entry highlights.
Key: ``wen2023fdistill``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from reference_impls import losses
from reference_impls.core.data_sources import OnlineSource, SourceContext
from reference_impls.core.generation import generate_responses
from reference_impls.core.recipe import Recipe
from reference_impls.core.training import StepLoss, aligned_logits
from reference_impls.losses import numerics
from reference_impls.registry import register
from reference_impls.tasks.strings import Example


def _mixture_kl(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, of_teacher: bool
) -> Tensor:
    r"""$\mathrm{KL}(p\,\|\,m)$ (``of_teacher``) or $\mathrm{KL}(q\,\|\,m)$ with $m = \tfrac12(p+q)$, per-token mean.

    The two halves of `reference_impls.losses.generalized_jsd` at β = ½ without their ½ weights
    (``generalized_jsd(β=½) = ½·KL(p‖m) + ½·KL(q‖m)`` on the same sequences), built from the loss
    API's own preparation, mixture and reduction so the conventions are the same.
    """
    log_p, log_q, keep = numerics.prepare_log_probs(student_logits, teacher_logits, labels, 1.0)
    log_m = numerics.log_mixture(log_p, log_q, 0.5)
    log_x = log_p if of_teacher else log_q
    return numerics.reduce_terms(log_x.exp() * (log_x - log_m), keep, labels, 1.0, False, "mean", None)


TEACHER_TERMS = {
    "kl": lambda s, t, y: losses.forward_kl(s, t, y),
    "js": lambda s, t, y: 0.5 * _mixture_kl(s, t, y, of_teacher=True),
    "tvd": lambda s, t, y: 0.5 * losses.total_variation(s, t, y),  # ¼·Σ|q−p| = ½·TVD
}
STUDENT_TERMS = {
    "rkl": lambda s, t, y: losses.reverse_kl(s, t, y),
    "js": lambda s, t, y: 0.5 * _mixture_kl(s, t, y, of_teacher=False),
    "tvd": lambda s, t, y: 0.5 * losses.total_variation(s, t, y),
}
DIVERGENCES = ("kl", "rkl", "js", "tvd")


@dataclass
class TeacherAndStudentSamples(OnlineSource):
    """Teacher samples drawn once before training (the fixed batches) plus, when the divergence
    has a student-weighted part, fresh student samples of the same prompts at every step.

    The step's batch is the student rollout with the teacher batch under ``teacher_*`` keys (or
    the teacher batch alone for KL).

    Attributes:
        need_student: Whether the divergence has a part on student samples.
        temperature: Sampling temperature of both models (plain ancestral sampling).
        seed: Seed of the one-off teacher sampling.
    """

    need_student: bool = True
    temperature: float = 1.0
    seed: int = 0
    name: str = "teacher-and-student-samples"

    def responses(self, examples: Sequence[Example], context: SourceContext) -> list[str]:
        """One teacher sample per prompt, drawn once (reproducibly from ``seed``)."""
        if context.teacher is None:
            raise ValueError("f-DISTILL needs a teacher to sample from")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return generate_responses(
                context.teacher,
                context.tokenizer,
                [e.prompt for e in examples],
                max_new_tokens=context.max_new_tokens,
                do_sample=True,
                temperature=self.temperature,
            )

    def batch_for_step(
        self, step: int, total_steps: int, fixed: dict[str, Tensor], sampler: object
    ) -> tuple[dict[str, Tensor], str]:
        """The teacher batch, with a fresh student rollout of its prompts when needed."""
        teacher_part = {f"teacher_{key}": value for key, value in fixed.items()}
        if not self.need_student:
            return teacher_part, "teacher"
        return {**sampler.from_student(fixed), **teacher_part}, "teacher+student"

    def describe(self) -> dict[str, str]:
        """Name, temperature, whether student samples are drawn."""
        return {
            "name": self.name,
            "temperature": str(self.temperature),
            "student_samples": str(self.need_student),
        }


@dataclass(frozen=True)
class FDistillStep(StepLoss):
    """One f-DISTILL step: the divergence's teacher-sample part plus its student-sample part."""

    divergence: str = "tvd"

    def __call__(
        self,
        model: torch.nn.Module,
        teacher: torch.nn.Module | None,
        batch: dict[str, Tensor],
        vocab_size: int | None,
    ) -> Tensor:
        if teacher is None:
            raise ValueError("f-DISTILL needs the teacher's logits (white-box access)")

        def aligned(prefix: str) -> tuple[Tensor, Tensor, Tensor]:
            student_logits, labels = aligned_logits(model, batch, prefix, vocab_size)
            with torch.no_grad():
                teacher_logits, _ = aligned_logits(teacher, batch, prefix, vocab_size)
            return student_logits, teacher_logits, labels

        loss = torch.zeros((), device=batch["teacher_input_ids"].device)
        if self.divergence in TEACHER_TERMS:
            loss = loss + TEACHER_TERMS[self.divergence](*aligned("teacher_"))
        if self.divergence in STUDENT_TERMS:
            loss = loss + STUDENT_TERMS[self.divergence](*aligned(""))
        return loss


@register("f-distill")
def fdistill_recipe(divergence: str = "tvd", temperature: float = 1.0) -> Recipe:
    """f-DISTILL with the step-wise decomposition of ``divergence`` (``kl``, ``rkl``, ``js``, ``tvd``).

    Args:
        divergence: Which f-divergence (paper §3.2; TVD and JS are the paper's best in Table 2).
        temperature: Sampling temperature of the teacher samples and student samples.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    source = TeacherAndStudentSamples(need_student=divergence in STUDENT_TERMS, temperature=temperature)
    return Recipe(
        method_id="f-distill",
        data=source,
        loss=FDistillStep(divergence),
    )
