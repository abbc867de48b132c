"""A token-level objective: one divergence of `reference_impls.losses` with its hyper-parameters bound.

Every logits method that trains with a divergence on aligned logits uses it: the word-level
objectives, GKD, DistiLLM, f-DISTILL, MiniMA, and MiniLLM's single-step term. It offers the
readable logits path (``__call__``) and the memory-lean fused path (``from_hidden``), between which
the training loop chooses by size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from reference_impls.core.training import HeadInputs
from reference_impls.losses.fused import fused_linear_divergence


@dataclass(frozen=True)
class WordLevelObjective:
    """A divergence with its hyper-parameters bound, on logits or (fused) on hidden states.

    Attributes:
        method_id: Taxonomy id, for error messages.
        divergence: The loss function of `reference_impls.losses` (its name picks the fused form).
        hyperparameters: Keyword arguments of the divergence (`temperature`, `beta`, ...).
    """

    method_id: str
    divergence: Callable[..., Tensor]
    hyperparameters: Mapping[str, float]

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor) -> Tensor:
        """The readable reference: `[B, T, V]` logits of both models into the divergence."""
        if teacher_logits is None:
            raise ValueError(f"{self.method_id} needs the teacher's logits (white-box access)")
        return self.divergence(student_logits, teacher_logits, labels, **self.hyperparameters)

    def from_hidden(self, student: HeadInputs, teacher: HeadInputs | None, labels: Tensor) -> Tensor:
        """The same loss from `[B, T, H]` hidden states and LM heads, chunk by chunk."""
        if teacher is None:
            raise ValueError(f"{self.method_id} needs the teacher's hidden states (white-box access)")
        return fused_linear_divergence(
            student.hidden,
            student.weight,
            teacher.hidden,
            teacher.weight,
            labels,
            self.divergence.__name__,
            student_bias=student.bias,
            teacher_bias=teacher.bias,
            **self.hyperparameters,
        )
