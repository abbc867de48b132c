"""What a method module returns: a `Recipe` — students × data × loss × evaluation — and how to run it.

Every method, white- or black-box, is one `Recipe` and runs through one run
(`reference_impls.run.run_recipe`): teacher, students, data, baseline, distilled, evaluate,
record. The parts are independent, so a new method combines existing ones with its own:

- ``students``: how the initial student is made (`Students`: the embedded student, on the
  teacher's tokenizer or on its own, or built from the teacher, e.g. pruned);
- ``data``: the distilled student's training sequences — a `DataSource` of the dataset, the
  teacher's or the student's own generations (white-box: it sees the teacher model), or a text
  pipeline over the teacher's answers (`reference_impls.black_box.pipeline.TextPipeline`);
- ``loss``: an objective on aligned logits, or a `StepLoss` on the whole batch;
- ``evaluation``: the held-out evaluation (a key of ``reference_impls.run.EVALUATIONS``), which
  also fixes the embedded suite, the embedded teacher and the baseline's data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.training import Loss, cross_entropy_objective
from reference_impls.tasks.strings import Example

TeacherAccess = Literal["model", "text"]


class TrainingData(Protocol):
    """The ``data`` part: what the distilled student is trained on, and how it reaches the teacher.

    ``teacher_access`` is ``"model"`` for the white-box sources (they may run the teacher model:
    its logits, hidden states or generations) and ``"text"`` for black-box pipelines (they only
    send prompts and read completions).
    """

    teacher_access: TeacherAccess

    def describe(self) -> dict[str, str]: ...


class StudentFactory(Protocol):
    """Builds the initial student from the teacher (e.g. by pruning), for `Students.build`."""

    def __call__(
        self,
        teacher: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        train: Sequence[Example],
        seed: int,
    ) -> PreTrainedModel: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Students:
    """The ``students`` part: how baseline and distilled student are initialised (identically).

    Attributes:
        tokenizer: ``None``: the student shares the teacher's tokenizer (token-level KD). A key of
            ``reference_impls.core.tokenizer.TOKENIZERS``: the embedded student uses that tokenizer
            of its own, its batches also carry the teacher's tokenization, and distances to the
            teacher (undefined across vocabularies) are not reported (ULD, DSKD).
        build: Builds the student from the teacher when no ``--student`` is given (MiniMA).
    """

    tokenizer: str | None = None
    build: StudentFactory | None = None

    @property
    def cross_tokenizer(self) -> bool:
        """Whether teacher and student may tokenize differently."""
        return self.tokenizer is not None


@dataclass(frozen=True)
class Recipe:
    """A method: what its run is made of (see the module docstring).

    Attributes:
        method_id: Taxonomy id, e.g. ``"forward-kl"``.
        data: The distilled student's training data (a `TrainingData`).
        loss: What the distilled student minimises on it: an objective ``(student_logits [B,T,V],
            teacher_logits [B,T,V] | None, labels [B,T]) -> scalar`` on logits the loop aligned
            (shifted once), or a `reference_impls.core.training.StepLoss`. Plain cross-entropy
            (the default) never runs the teacher.
        students: How the students are made.
        evaluation: The held-out evaluation, a key of ``reference_impls.run.EVALUATIONS``.
        hyperparameters: Resolved hyper-parameters, stamped by the registry from the builder's
            signature (never written by hand) and recorded in the run config.
    """

    method_id: str
    data: TrainingData
    loss: Loss = cross_entropy_objective
    students: Students = Students()
    evaluation: str = "strings"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """How to run a recipe; every default runs the embedded setting on CPU or GPU.

    ``None`` means the embedded suite's default (see ``reference_impls.run.EVALUATIONS``: the string
    suite trains 400 warm-start + 800 steps and scores 210 held-out items; the instruction suite
    trains 600 steps and scores 240). An option that does not apply to the recipe (``data`` for a
    black-box pipeline, ``teacher_url`` for a white-box method) is refused with a reason.

    Attributes:
        device: ``"auto"`` (GPU if available), ``"cpu"`` or ``"cuda"``.
        steps: Optimizer steps for baseline and distilled student.
        sft_steps: Cross-entropy steps on the dataset responses that produce the shared starting
            point of both students (string suite); 0 starts from the initialisation as it is.
        seed: Student initialisation, data order and the teacher's sampling seeds.
        teacher: Local path or hub id for ``from_pretrained``; ``None`` → the embedded teacher.
        teacher_url: Base URL of an OpenAI-compatible endpoint (black-box pipelines only).
        teacher_model: Model name sent to ``teacher_url``.
        api_key_env: Environment variable with the endpoint's key (read at call time, never stored).
        student: Local path or hub id; ``None`` → the embedded tiny student.
        student_family: Architecture of the embedded student: ``"llama"`` or ``"gpt2"`` (same
            depth and width; see `reference_impls.core.models.STUDENT_FAMILIES`).
        data: JSONL file with ``prompt``/``response`` lines (string suite); the last ``eval_size``
            lines (at most a fifth of the file) are held out for evaluation.
        eval_data: Further held-out JSONL sets (with ``data``), each scored by exact match and
            word-level ROUGE-L as ``"<metric> (<file stem>)"`` — the MiniLLM protocol's several
            instruction sets (Dolly, Self-Instruct, Vicuna, S-NI, UnNI) in one run.
        batch_size: Sequences per optimizer step (per process).
        learning_rate: Peak AdamW learning rate.
        eval_size: Held-out examples scored.
        train_size: Suite training examples (string suite, ignored with ``data``). 300 by the
            calibration sweep (``benchmarks/calibration.py``): with 1000 vanilla KD did not
            separate from the baseline on the golden metric over 3 seeds, with 300 it does.
        seed_tasks: Human-written seed tasks of a black-box pipeline (and of its baseline).
        max_new_tokens: Generation limit at evaluation and for generated data sources.
        trust_remote_code: Passed to ``from_pretrained``; off unless asked for.
        teacher_topk: Train from the teacher's top-k log-probs stored once on disk instead of
            running the teacher at every step (token-level forward/reverse KL on fixed sequences).
        cache: The black-box response cache file; ``None`` → ``<cache root>/blackbox/responses.jsonl``.
        progress: Show progress bars.
        gradient_accumulation: Batches per optimizer step, weighted by their target tokens (the
            effective batch is ``batch_size × gradient_accumulation × processes``).
        precision: ``"auto"`` (bf16 on a GPU that supports it, else fp32), ``"fp32"`` or ``"bf16"``
            (autocast; weights and optimizer state stay fp32).
        checkpoint_dir: Where the training phases save checkpoints and resume from (``kdatlas
            run`` uses ``<run dir>/checkpoints``); ``None``: no checkpoints.
        checkpoint_every: Optimizer steps between checkpoints of a phase.
        log_with: Accelerate trackers for the loss curves: ``"auto"`` (TensorBoard when installed),
            ``"none"``, or a tracker name (``tensorboard``, ``wandb``, ...).
        logging_dir: Where trackers write (``kdatlas run``: ``<run dir>/logs``).
    """

    device: str = "auto"
    steps: int | None = None
    sft_steps: int | None = None
    seed: int = 0
    teacher: str | None = None
    teacher_url: str | None = None
    teacher_model: str = "kdatlas-embedded-teacher"
    api_key_env: str | None = "OPENAI_API_KEY"
    student: str | None = None
    student_family: str = "llama"
    data: str | None = None
    eval_data: tuple[str, ...] = ()
    batch_size: int = 32
    learning_rate: float = 3e-3
    eval_size: int | None = None
    train_size: int = 300
    seed_tasks: int = 24
    max_new_tokens: int | None = None
    trust_remote_code: bool = False
    teacher_topk: int | None = None
    cache: str | None = None
    progress: bool = True
    gradient_accumulation: int = 1
    precision: str = "auto"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 100
    log_with: str = "auto"
    logging_dir: str | None = None
