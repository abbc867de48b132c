"""Where the sequences that carry the distillation loss come from.

Most white-box KD papers differ along two orthogonal axes: the *divergence* between teacher and
student distributions (forward KL, reverse KL, JSD, ...) and the *data source* of the sequences
on which that divergence is evaluated:

1. ``fixed``: the dataset's reference responses (word-level / supervised KD);
2. ``teacher``: responses decoded from the teacher (sequence-level KD, SeqKD);
3. ``student``: responses sampled from the current student (on-policy: MiniLLM, GKD λ=1);
4. ``mixed``: student samples with probability λ, else fixed (GKD 0<λ<1);
5. ``adaptive off-policy``: a replay buffer of student samples (DistiLLM).

A `DataSource` is the second axis as a component. Version 1 implements the two *static*
sources (1 and 2): their responses are computed once per run, before training. The dynamic
sources (3-5) need the current student at every step and will extend this interface with a
per-step hook; the static ones stay valid as they are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .generation import generate_responses
from .tasks import Example


@dataclass(frozen=True)
class SourceContext:
    """What a data source may use to produce responses.

    Attributes:
        teacher: The teacher model (already on its device), or ``None`` if there is none.
        tokenizer: The shared tokenizer.
        max_new_tokens: Length limit for generated responses.
    """

    teacher: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    max_new_tokens: int = 24


class DataSource(ABC):
    """The source of the training responses (one axis of the KD design space)."""

    #: Short identifier recorded in the run config.
    name: str = "abstract"

    @abstractmethod
    def responses(self, examples: Sequence[Example], context: SourceContext) -> list[str]:
        """One response per example; training sequences are ``prompt + response``."""

    def describe(self) -> dict[str, str]:
        """JSON-serialisable description for the run config."""
        return {"name": self.name}


@dataclass(frozen=True)
class DatasetResponses(DataSource):
    """The suite's (or the JSONL file's) reference responses: supervised / word-level KD."""

    name: str = "dataset"

    def responses(self, examples: Sequence[Example], context: SourceContext) -> list[str]:
        """The reference responses, unchanged."""
        return [e.response for e in examples]


@dataclass(frozen=True)
class TeacherGenerated(DataSource):
    """Responses decoded from the teacher once per run: sequence-level KD (Kim & Rush, 2016).

    Attributes:
        decoding: ``"greedy"`` (the only decoding in version 1; beam search and sampling later).
    """

    name: str = "teacher"
    decoding: str = "greedy"

    def __post_init__(self) -> None:
        if self.decoding != "greedy":
            raise ValueError(f"decoding {self.decoding!r} is not implemented — use 'greedy'")

    def responses(self, examples: Sequence[Example], context: SourceContext) -> list[str]:
        """The teacher's greedy response to each prompt."""
        if context.teacher is None:
            raise ValueError("TeacherGenerated needs a teacher model")
        prompts = [e.prompt for e in examples]
        return generate_responses(
            context.teacher, context.tokenizer, prompts, max_new_tokens=context.max_new_tokens
        )

    def describe(self) -> dict[str, str]:
        """Name and decoding."""
        return {"name": self.name, "decoding": self.decoding}
