"""Where the sequences that carry the distillation loss come from.

Most white-box KD papers differ along two orthogonal axes: the *divergence* between teacher and
student distributions (forward KL, reverse KL, JSD, ...) and the *data source* of the sequences
on which that divergence is evaluated:

1. ``fixed``: the dataset's reference responses (word-level / supervised KD);
2. ``teacher``: responses decoded from the teacher (sequence-level KD, SeqKD);
3. ``student``: responses sampled from the current student (on-policy: MiniLLM, GKD λ=1);
4. ``mixed``: student samples with probability λ, else fixed (GKD 0<λ<1);
5. ``adaptive off-policy``: a replay buffer of student samples (DistiLLM).

A `DataSource` is the second axis as a component. The two *static* sources (1 and 2) compute
their responses once per run, before training. The *dynamic* sources (3-5, `OnlineSource`) also
decide at every training step which sequences the loss is computed on: they receive the step's
fixed batch and a `Sampler` (the current student, and the teacher, ready to continue the batch's
prompts) and return the batch to train on, with its origin. The loop records how often each
origin was used (``origins`` in the run config), which is what the statistics tests check.

Any divergence combines with any source: a recipe is an objective *and* a source.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.checkpoints import as_random_state
from reference_impls.core.generation import generate_responses
from reference_impls.losses.numerics import check_unit_interval
from reference_impls.tasks.strings import Example


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
    #: Every source here may run the teacher model (its generations or logits): white-box access.
    teacher_access: ClassVar[str] = "model"

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


# ------------------------------------------------------------------------------ dynamic sources

Batch = dict[str, Tensor]


class Sampler(Protocol):
    """Continues the prompts of a batch; given to `OnlineSource.batch_for_step` by the loop."""

    def from_student(self, batch: Batch) -> Batch:
        """The batch's prompts with responses sampled from the current student."""

    def from_teacher(self, batch: Batch) -> Batch:
        """The batch's prompts with responses sampled from the teacher."""


class OnlineSource(DataSource):
    """A source that chooses the training sequences at every step (on-policy and mixtures).

    Its `responses` are the dataset's: they make the fixed batches the loop offers at each step
    (the "off-policy" half of a mixture, and the prompts every sampler continues).
    """

    #: Sampling temperature of the student (and of the teacher for teacher samples).
    temperature: float = 1.0

    def next_batch(self, step: int, total_steps: int, fixed: Batch, sampler: Sampler) -> Batch:
        """`batch_for_step`, counting each origin in ``origins`` (reported in the run config)."""
        batch, origin = self.batch_for_step(step, total_steps, fixed, sampler)
        counts = self.__dict__.setdefault("origins", {})
        counts[origin] = counts.get(origin, 0) + 1
        return batch

    def responses(self, examples: Sequence[Example], context: SourceContext) -> list[str]:
        """The reference responses: the fixed batches and the prompts to continue."""
        return [e.response for e in examples]

    @abstractmethod
    def batch_for_step(
        self, step: int, total_steps: int, fixed: Batch, sampler: Sampler
    ) -> tuple[Batch, str]:
        """The batch to train on at ``step`` (0-based) and its origin (``"student"``, ...)."""

    def validation_interval(self, total_steps: int) -> int | None:
        """Steps between validation losses reported to `on_validation`; ``None``: never."""
        return None

    def on_validation(self, loss: float) -> None:
        """Called with the student's cross-entropy on held-out data before training and then every
        `validation_interval` steps."""

    def state_dict(self) -> dict[str, Any]:
        """What changes while training, for checkpoints (`reference_impls.core.checkpoints`).
        A source with more state (coins, buffers, rollouts) adds it."""
        return {"origins": dict(getattr(self, "origins", {}))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.origins = dict(state["origins"])


@dataclass
class MixedStudentData(OnlineSource):
    """GKD's mixture (Agarwal et al., ICLR 2024): at each step, with probability λ the student's
    own samples, otherwise the dataset's responses — or, with ``seq_kd``, teacher samples.

    λ = 1 is fully on-policy (as MiniLLM's sampling); λ = 0 is supervised/word-level KD.
    Defaults follow TRL's ``GKDConfig`` (``lmbda=0.5``, ``temperature=0.9``, ``seq_kd=False``).

    Attributes:
        lam: Probability λ of training on student samples at a step.
        temperature: Sampling temperature of the student (and teacher) samples.
        seq_kd: Use teacher samples instead of the dataset's responses on the other steps.
        seed: Seed of the per-step coin (the sampler has its own generator).
    """

    lam: float = 0.5
    temperature: float = 0.9
    seq_kd: bool = False
    seed: int = 0
    name: str = "mixed"
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_unit_interval("lam (λ)", self.lam)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        self._rng = random.Random(self.seed)

    def batch_for_step(
        self, step: int, total_steps: int, fixed: Batch, sampler: Sampler
    ) -> tuple[Batch, str]:
        """Student samples with probability λ (``u ≤ λ`` with ``u ~ U(0, 1)``), else the fallback."""
        if self._rng.random() < self.lam:
            return sampler.from_student(fixed), "student"
        if self.seq_kd:
            return sampler.from_teacher(fixed), "teacher"
        return fixed, "dataset"

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "coin": self._rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._rng.setstate(as_random_state(state["coin"]))

    def describe(self) -> dict[str, str]:
        """Name, λ, temperature, seq_kd."""
        return {
            "name": self.name,
            "lam": str(self.lam),
            "temperature": str(self.temperature),
            "seq_kd": str(self.seq_kd),
        }


@dataclass
class AdaptiveStudentReplay(OnlineSource):
    """DistiLLM's adaptive off-policy student-generated outputs (Ko et al., ICML 2024, §3.2).

    A threshold τ (``init_threshold``, 0 by default) grows by ``threshold_step`` (0.1), up to 1,
    each time the student's validation cross-entropy is at least ``loss_eps`` (0.1) above the
    reference loss; the reference is the loss before training and is moved to the new loss only
    when τ grows (as ``finetune.py`` keeps ``prev_avg_loss``). At
    each step, with ``u ~ U(0, 1)`` and the decaying generation ratio
    ``τ_gen = τ · (1 − step / total_steps)``:

    * ``u < τ_gen``, or ``u < τ`` while the replay buffer holds fewer than ``capacity`` batches:
      sample fresh student outputs and push them to the buffer (``"student"``);
    * else ``u < τ``: train on a batch drawn from the buffer (``"replay"``);
    * else the dataset's responses (``"dataset"``).

    Defaults are the official scripts' (``--init-threshold 0.0 --loss-eps 0.1 --capacity 1000``,
    the 0.1 increment and the "decreasing" replay ratio in ``distillm/finetune.py``). The
    capacity counts batches here (the official buffer stores batches too).

    Attributes:
        init_threshold: Initial τ.
        threshold_step: Increment of τ after a validation loss increase.
        loss_eps: Minimum increase of the validation loss that raises τ.
        capacity: Replay buffer size (batches); the oldest batch is dropped when full.
        temperature: Student sampling temperature (the scripts sample with top-p 1.0, T = 1).
        validations: Validation losses per run (DistiLLM evaluates once per epoch; the embedded
            runs are short, so the interval is ``total_steps // validations``).
        seed: Seed of the per-step coin and of the replay draws.
    """

    init_threshold: float = 0.0
    threshold_step: float = 0.1
    loss_eps: float = 0.1
    capacity: int = 1000
    temperature: float = 1.0
    validations: int = 10
    seed: int = 0
    name: str = "adaptive-student-replay"
    threshold: float = field(init=False)
    buffer: list[Batch] = field(init=False, repr=False)
    _previous_loss: float | None = field(init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_unit_interval("init_threshold", self.init_threshold)
        if self.capacity < 1 or self.validations < 1:
            raise ValueError("capacity and validations must be ≥ 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        self.threshold, self.buffer, self._previous_loss = self.init_threshold, [], None
        self._rng = random.Random(self.seed)

    def batch_for_step(
        self, step: int, total_steps: int, fixed: Batch, sampler: Sampler
    ) -> tuple[Batch, str]:
        """Fresh student samples, a replayed batch, or the dataset's — by the rule above."""
        u = self._rng.random()
        generation_ratio = self.threshold * (1 - step / max(total_steps, 1))
        if u < generation_ratio or (u < self.threshold and len(self.buffer) < self.capacity):
            batch = sampler.from_student(fixed)
            self.buffer.append({key: value.detach().cpu() for key, value in batch.items()})
            if len(self.buffer) > self.capacity:
                self.buffer.pop(0)
            return batch, "student"
        if u < self.threshold:
            replayed = self.buffer[self._rng.randrange(len(self.buffer))]
            device = fixed["input_ids"].device
            return {key: value.to(device) for key, value in replayed.items()}, "replay"
        return fixed, "dataset"

    def validation_interval(self, total_steps: int) -> int | None:
        """``total_steps // validations`` (at least 1)."""
        return max(1, total_steps // self.validations)

    def on_validation(self, loss: float) -> None:
        """Raise τ when the validation loss is ``loss_eps`` above the reference; the first call
        (before training) sets the reference."""
        if self._previous_loss is None:
            self._previous_loss = loss
        elif loss >= self._previous_loss + self.loss_eps:
            self.threshold = min(1.0, self.threshold + self.threshold_step)
            self._previous_loss = loss

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "threshold": self.threshold,
            "previous_loss": self._previous_loss,
            "buffer": list(self.buffer),
            "coin": self._rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.threshold, self._previous_loss = state["threshold"], state["previous_loss"]
        self.buffer = [dict(batch) for batch in state["buffer"]]
        self._rng.setstate(as_random_state(state["coin"]))

    def describe(self) -> dict[str, str]:
        """The hyper-parameters and the final threshold."""
        return {
            "name": self.name,
            "init_threshold": str(self.init_threshold),
            "threshold_step": str(self.threshold_step),
            "loss_eps": str(self.loss_eps),
            "capacity": str(self.capacity),
            "temperature": str(self.temperature),
            "final_threshold": str(round(self.threshold, 6)),
        }


# ------------------------------------------------------------------------------------ parsing

SOURCE_SPECS = {
    "dataset": "the dataset's responses (word-level / supervised KD)",
    "teacher": "teacher responses, decoded once before training (SeqKD)",
    "student[:T]": "fresh student samples at every step (on-policy; GKD with λ = 1), temperature T (default 1)",
    "mixed:λ[:T]": "student samples with probability λ, else the dataset's responses (GKD)",
    "adaptive": "DistiLLM's adaptive schedule of student samples with a replay buffer",
}


def parse_source(spec: str) -> DataSource:
    """A data source from a short spec (``kdatlas run ID --source SPEC``), e.g. ``mixed:0.5``.

    Raises:
        ValueError: For an unknown spec, listing the valid ones.
    """
    name, _, rest = spec.strip().partition(":")
    arguments = [a for a in rest.split(":") if a] if rest else []
    try:
        if name == "dataset" and not arguments:
            return DatasetResponses()
        if name == "teacher" and not arguments:
            return TeacherGenerated()
        if name == "student" and len(arguments) <= 1:
            return MixedStudentData(lam=1.0, temperature=float(arguments[0]) if arguments else 1.0)
        if name == "mixed" and 1 <= len(arguments) <= 2:
            temperature = float(arguments[1]) if len(arguments) == 2 else 0.9
            return MixedStudentData(lam=float(arguments[0]), temperature=temperature)
        if name == "adaptive" and not arguments:
            return AdaptiveStudentReplay()
    except ValueError as error:
        raise ValueError(f"data source '{spec}': {error}") from None
    choices = "; ".join(f"{key} — {meaning}" for key, meaning in SOURCE_SPECS.items())
    raise ValueError(f"unknown data source '{spec}'. Choose one of: {choices}")
