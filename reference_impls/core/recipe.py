"""What a method module returns: a `Recipe`, the parts its run is made of."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.data_sources import DataSource
from reference_impls.core.training import StepLoss
from reference_impls.tasks.strings import Example


@dataclass(frozen=True)
class Recipe:
    """What a method contributes: its objective and the source of its training sequences.

    Attributes:
        method_id: Taxonomy id, e.g. ``"forward-kl"``.
        objective: ``(student_logits [B,T,V], teacher_logits [B,T,V] | None, labels [B,T])
            -> scalar``; logits and labels are already aligned (shifted once by the loop).
        data_source: E.g. ``DatasetResponses()`` or ``TeacherGenerated()``.
        uses_teacher_logits: If False the teacher is not run during training and the objective
            receives ``None`` (e.g. sequence-level KD, which only needs teacher text).
        hyperparameters: Resolved hyper-parameter values, recorded in the run config.
        step_loss: For methods whose step is more than an objective on one batch's logits
            (MiniLLM): computes the step's loss from the models and the batch (see
            `reference_impls.core.training.StepLoss`); ``objective`` is then documentation only.
        cross_tokenizer: The student may use a different tokenizer than the teacher (ULD, DSKD):
            the distilled student's batches carry both tokenizations (teacher's under
            ``teacher_*`` keys) and distances to the teacher, undefined across vocabularies, are
            not reported.
        student_tokenizer: For ``cross_tokenizer`` with the embedded student: which embedded
            tokenizer it uses (a key of ``reference_impls.core.tokenizer.TOKENIZERS``).
        build_student: Builds the initial student from the teacher when no ``--student`` is given
            (MiniMA: structured pruning of the teacher); ``describe()`` identifies it in caches.
    """

    method_id: str
    objective: Callable[[Tensor, Tensor | None, Tensor], Tensor]
    data_source: DataSource
    uses_teacher_logits: bool = True
    hyperparameters: Mapping[str, float | int | str] = field(default_factory=dict)
    step_loss: StepLoss | None = None
    cross_tokenizer: bool = False
    student_tokenizer: str = "pair"
    build_student: StudentFactory | None = None


class StudentFactory(Protocol):
    """Builds the initial student from the teacher (e.g. by pruning), for `Recipe.build_student`."""

    def __call__(
        self,
        teacher: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        train: Sequence[Example],
        seed: int,
    ) -> PreTrainedModel: ...

    def describe(self) -> dict[str, Any]: ...
