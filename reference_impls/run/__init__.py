"""The one run: every recipe, white- or black-box, end to end — teacher vs. baseline vs. distilled.

`run_recipe` reads in the order things happen: the teacher, the students (one initialisation for
both), the teacher scored, the baseline (the same student and budget without the method), the
distilled student's data, the distilled student, its score, and the record. The steps are those
of the recipe's evaluation suite (``EVALUATIONS``): on the string suite the student sees the
teacher *model* (`reference_impls.run.strings`); on the classification suite the encoder
(BERT-era) student sees the encoder teacher model (`reference_impls.run.encoders`); on the
instruction suite it sees only the teacher's *text* (`reference_impls.run.instructions`). Every method of a suite gets the same
students, budget and held-out items, so their numbers are comparable.

Above the method packages: nothing in ``white_box/`` or ``black_box/`` imports it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers

from reference_impls.black_box.pipeline import EVALUATIONS as INSTRUCTION_EVALUATIONS
from reference_impls.black_box.pipeline import TextPipeline
from reference_impls.core.data_sources import DataSource
from reference_impls.core.encoders import LabelledTexts
from reference_impls.core.recipe import Recipe, RunConfig
from reference_impls.core.sft import TrainingExample
from reference_impls.run.encoders import EncoderSuiteRun
from reference_impls.run.instructions import InstructionSuiteRun
from reference_impls.run.scoring import METRIC_NAMES
from reference_impls.run.setup import check_device
from reference_impls.run.strings import StringSuiteRun
from reference_impls.teachers.embedded import TeacherRecipe
from reference_impls.teachers.encoder import EncoderTeacherRecipe
from reference_impls.teachers.instruct import InstructTeacherRecipe

EVALUATIONS: dict[str, str] = {
    "strings": "held-out examples of the string suite: exact match, ROUGE-L, distances to the teacher",
    "classification": "held-out texts of the classification suite (encoders): accuracy, OOD accuracy, closeness to the teacher",
    **{name: evaluation.description for name, evaluation in INSTRUCTION_EVALUATIONS.items()},
}
__all__ = ["EVALUATIONS", "METRIC_NAMES", "RunConfig", "RunResult", "run_recipe"]


@dataclass
class RunResult:
    """Metrics, loss curves, the resolved config and timings of one run.

    Attributes:
        metrics: ``{"teacher" | "baseline" | "distilled": {metric name: value}}``. Empty on the
            non-main processes of a distributed launch.
        curves: ``{"baseline": [...], "distilled": [...]}`` training loss per step.
        config: Fully resolved, JSON-serialisable configuration.
        seconds: Wall-clock seconds per step.
        data: The distilled training data of a black-box pipeline (``data.jsonl`` of a run).
        student: The distilled student (main process), ready for ``save_pretrained``.
        tokenizer: The student's tokenizer.
    """

    metrics: dict[str, dict[str, float]]
    curves: dict[str, list[float]]
    config: dict[str, Any]
    seconds: dict[str, float]
    data: list[TrainingExample] = field(default_factory=list)
    student: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)


def _suite_run(recipe: Recipe, config: RunConfig, teacher_recipe: Any, teacher: Any) -> Any:
    """The steps of the recipe's evaluation suite, with the config checked against them."""
    check_device(config)
    if recipe.evaluation not in EVALUATIONS:
        raise ValueError(f"unknown evaluation {recipe.evaluation!r} — choose one of {', '.join(EVALUATIONS)}")
    strings, encoders = recipe.evaluation == "strings", recipe.evaluation == "classification"
    suite, data_type, teacher_type = (
        ("string suite", DataSource, TeacherRecipe) if strings
        else ("classification suite", LabelledTexts, EncoderTeacherRecipe) if encoders
        else ("instruction suite", TextPipeline, InstructTeacherRecipe)
    )  # fmt: skip
    if not isinstance(recipe.data, data_type):
        raise ValueError(f"{recipe.method_id}: the {suite} trains on a {data_type.__name__}, not {recipe.data!r}")
    if teacher_recipe is not None and not isinstance(teacher_recipe, teacher_type):
        raise ValueError(f"the {suite}'s teacher is built from a {teacher_type.__name__}, got {teacher_recipe!r}")
    if (strings or encoders) and teacher is not None:
        raise ValueError("a ready text teacher applies to black-box pipelines only")
    if strings:
        return StringSuiteRun(recipe, config, teacher_recipe)
    if encoders:
        return EncoderSuiteRun(recipe, config, teacher_recipe)
    return InstructionSuiteRun(recipe, config, teacher_recipe, teacher)


def run_recipe(
    recipe: Recipe, config: RunConfig | None = None, *, teacher_recipe: Any = None, teacher: Any = None
) -> RunResult:
    """Train and evaluate the baseline and the distilled student against the teacher.

    Args:
        recipe: The method: students × data × loss × evaluation.
        config: Models, data, budget and device (default: the embedded setting).
        teacher_recipe: How the embedded teacher is trained (tests pass a few-step recipe): a
            ``TeacherRecipe`` on the string suite, an ``EncoderTeacherRecipe`` on the classification
            suite, an ``InstructTeacherRecipe`` on the instruction suite.
        teacher: A ready `reference_impls.teachers.text.TextTeacher` instead of the one ``config``
            names (black-box pipelines).

    Returns:
        Metrics of ``teacher``, ``baseline`` and ``distilled`` (on the main process), curves,
        the resolved config and the seconds of each step.

    Raises:
        ValueError: A config value or option that does not apply, unloadable models or data,
            mismatched vocabularies, or a pipeline that kept no training data.
    """
    config = config or RunConfig()
    run = _suite_run(recipe, config, teacher_recipe, teacher)
    seconds: dict[str, float] = {}

    @contextmanager
    def timed(step: str) -> Iterator[None]:
        tick = time.perf_counter()
        yield
        seconds[step] = time.perf_counter() - tick

    metrics: dict[str, dict[str, float]] = {}
    curves: dict[str, list[float]] = {}
    with timed("total"):
        with timed("teacher_load"):  # 1. the teacher (embedded: shipped with the package)
            run.load_teacher()
        with timed("students"):  # 2. the students: one initialisation (and warm start) for both
            run.prepare_students()
        with timed("teacher_eval"):  # 3. the teacher scored on the held-out items
            metrics["teacher"] = run.score_teacher()
        with timed("baseline"):  # 4. the baseline: same student and budget, no method
            curves["baseline"], metrics["baseline"] = run.train_baseline()
        with timed("data"):  # 5. the distilled student's data: the recipe's data part
            data = run.distillation_data()
        with timed("distill"):  # 6. the distilled student: the recipe's loss on that data
            curves["distilled"] = run.train_distilled(data)
        with timed("distilled_eval"):  # 7. the distilled student scored
            metrics["distilled"] = run.score_distilled()
    run.accelerator.end_training()  # flush the trackers
    record = {  # 8. the record
        "method_id": recipe.method_id,
        "hyperparameters": dict(recipe.hyperparameters),
        **run.describe(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    # Only the main process evaluates; the others report their training curves.
    main_metrics = metrics if run.is_main_process else {}
    examples = getattr(data, "examples", [])
    student, tokenizer = run.distilled_student() if run.is_main_process else (None, None)
    return RunResult(main_metrics, curves, record, seconds, examples, student, tokenizer)
