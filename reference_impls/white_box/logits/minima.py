r"""MiniMA (Zhang et al., ACL 2025): mind the capacity gap — prune the teacher, then distil.

The paper's "law of capacity gap": a student distils best from a teacher that is a fixed multiple
of its own size, not from the largest teacher available; read the other way, for a given teacher
the student should be about 40 % of its size (the optimal teacher is about 2.5× the student in
the ACL 2025 version; secondary sources agree, the paper's figure was not seen — see the entry).
MiniMA builds that student by **structured pruning of the teacher** — whole attention heads, FFN
channels and hidden channels chosen by a gradient-based importance score on a little text, and
the middle block of layers kept — and then **distils logits** into it (forward KL).

Here: `reference_impls.white_box.pruning.prune_llama` does the pruning (``importance="gradient"``,
the paper's score; layers dropped from both ends as the official converter does), the student
shape closest to ``size_ratio`` of the teacher's parameters is searched by
`reference_impls.white_box.pruning.student_shape`, and the recipe is word-level forward KL on the
dataset's responses. `benchmarks/capacity_gap.py` sweeps the size ratio on the embedded default
(pruned vs random initialisation) for the capacity-gap curve. Key: ``zhang2025minima``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls import losses
from reference_impls.core.data_sources import DatasetResponses
from reference_impls.core.logits_loss import WordLevelObjective
from reference_impls.core.recipe import Recipe, Students
from reference_impls.core.training import make_dataloader
from reference_impls.registry import register
from reference_impls.tasks.strings import Example
from reference_impls.white_box.pruning import IMPORTANCE_SCORES, prune_llama, student_shape


@dataclass(frozen=True)
class PrunedStudent:
    """The student as MiniMA makes it: the teacher pruned to about ``size_ratio`` of its size.

    Attributes:
        size_ratio: Target student/teacher parameter ratio (the closest prunable shape is used).
        importance: Structure importance score: ``gradient`` (the paper's), ``activation`` or
            ``magnitude``.
        calibration_examples: Training examples whose loss gradients score the structures.
    """

    size_ratio: float = 0.4
    importance: str = "gradient"
    calibration_examples: int = 128

    def __call__(
        self,
        teacher: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        train: Sequence[Example],
        seed: int,
    ) -> PreTrainedModel:
        """Prune ``teacher`` (left unchanged) into the student shape."""
        examples = list(train[: self.calibration_examples])
        batches = make_dataloader(
            tokenizer,
            [e.prompt for e in examples],
            [e.response for e in examples],
            batch_size=16,
            shuffle=False,
        )
        shape = student_shape(teacher, self.size_ratio)
        return prune_llama(teacher, **shape, importance=self.importance, calibration_batches=batches)

    def describe(self) -> dict[str, Any]:
        """Identity for caches and the run config."""
        return {
            "builder": "minima-pruning",
            "size_ratio": self.size_ratio,
            "importance": self.importance,
            "calibration_examples": self.calibration_examples,
        }


@register("minima")
def minima_recipe(size_ratio: float = 0.4, importance: str = "gradient", temperature: float = 1.0) -> Recipe:
    """MiniMA: a student pruned from the teacher to ``size_ratio`` of its size, then forward-KL KD.

    Args:
        size_ratio: Student/teacher size ratio (about 0.4 per the capacity-gap law; MiniMA-3B from
            LLaMA2-7B is about 0.43).
        importance: Pruning importance score (``gradient`` is the paper's first-order score).
        temperature: Temperature of the forward KL (1).
    """
    if importance not in IMPORTANCE_SCORES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCE_SCORES)}, got {importance!r}")
    if not 0.0 < size_ratio < 1.0:
        raise ValueError(f"size_ratio must be in (0, 1), got {size_ratio}")
    return Recipe(
        method_id="minima",
        data=DatasetResponses(),
        loss=WordLevelObjective("minima", losses.forward_kl, {"temperature": temperature}),
        students=Students(build=PrunedStudent(size_ratio, importance)),
    )
