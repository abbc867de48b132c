"""Run a black-box distillation pipeline end to end: teacher vs. seed-only baseline vs. distilled.

The method-facing parts (`PipelineRecipe`, `PipelineContext`, the evaluations) are in
`reference_impls.black_box.pipeline`; this module runs them:

1. the teacher, reached only through text (`TextTeacher`): the embedded instruction teacher, a
   local model folder, or any OpenAI-compatible endpoint (``--teacher-url``); every call goes
   through the persistent response cache, so a rerun makes no teacher call;
2. the *baseline*: the embedded student trained on the seed tasks only (the human-written data
   the pipeline starts from), same budget;
3. the *distilled* student: same initialisation and budget, trained on the pipeline's data;
4. the three scored exactly on held-out data (the teacher through the same text interface).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from reference_impls.black_box.pipeline import (
    EVALUATIONS,
    PipelineConfig,
    PipelineContext,
    PipelineRecipe,
    score,
    student_answers,
)
from reference_impls.core.models import build_student, count_parameters
from reference_impls.core.sft import TrainingExample
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.tasks import instructions as suite
from reference_impls.teachers.embedded import cache_root
from reference_impls.teachers.http import OpenAICompatibleTeacher
from reference_impls.teachers.instruct import (
    InstructTeacherRecipe,
    instruct_teacher_dir,
    load_or_train_instruct_teacher,
)
from reference_impls.teachers.text import LocalTeacher, TextTeacher

# ------------------------------------------------------------------------------------ the run


@dataclass
class PipelineResult:
    """Metrics, loss curves, the resolved config (with the pipeline's stats) and timings."""

    metrics: dict[str, dict[str, float]]
    curves: dict[str, list[float]]
    config: dict[str, Any]
    seconds: dict[str, float]
    data: list[TrainingExample]


def resolve_teacher(
    config: PipelineConfig, device: torch.device, teacher_recipe: InstructTeacherRecipe
) -> TextTeacher:
    """The teacher the config names: an HTTP endpoint, a local folder, or the embedded one."""
    if config.teacher_url is not None:
        return OpenAICompatibleTeacher(config.teacher_url, config.teacher_model, config.api_key_env)
    if config.teacher is not None:
        return LocalTeacher.from_pretrained(config.teacher, device=device)
    model, tokenizer = load_or_train_instruct_teacher(device, config.progress, recipe=teacher_recipe)
    return LocalTeacher(model, tokenizer, label=f"embedded/{instruct_teacher_dir(teacher_recipe).name}")


def run_pipeline(
    recipe: PipelineRecipe,
    config: PipelineConfig,
    *,
    teacher_recipe: InstructTeacherRecipe = InstructTeacherRecipe(),
    teacher: TextTeacher | None = None,
) -> PipelineResult:
    """Run ``recipe``'s data pipeline and compare the distilled student with the seed-only
    baseline and the teacher (see the module docstring).

    Args:
        recipe: The method's data pipeline and evaluation.
        config: Teacher, student, budget and device.
        teacher_recipe: How the embedded instruction teacher is trained (tests pass a small one).
        teacher: A ready `TextTeacher` to use instead of the one ``config`` names.

    Raises:
        ValueError: Bad config values, or a pipeline that produced no training data.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    if config.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {config.device!r}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no GPU is available — use --device cpu")
    if recipe.evaluation not in EVALUATIONS:
        raise ValueError(f"unknown evaluation {recipe.evaluation!r} — choose one of {', '.join(EVALUATIONS)}")
    device = torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")
    evaluation = EVALUATIONS[recipe.evaluation]

    tick = time.perf_counter()
    teacher = teacher or resolve_teacher(config, device, teacher_recipe)
    seconds["teacher_load"] = time.perf_counter() - tick

    if config.student is None:
        tokenizer = build_tokenizer()
        student_id = "embedded-student"

        def new_student() -> PreTrainedModel:
            return build_student(tokenizer, config.seed).to(device)

    else:
        tokenizer = AutoTokenizer.from_pretrained(config.student)
        student_id = config.student

        def new_student() -> PreTrainedModel:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                return AutoModelForCausalLM.from_pretrained(config.student).to(device)

    cache_path = Path(config.cache) if config.cache else cache_root() / "blackbox" / "responses.jsonl"
    context = PipelineContext(
        teacher=teacher,
        cache_path=cache_path,
        seeds=suite.seed_tasks(config.seed_tasks, seed=config.seed),
        tokenizer=tokenizer,
        config=config,
        device=device,
        new_student=new_student,
    )
    test = evaluation.examples(config.eval_size)
    metrics: dict[str, dict[str, float]] = {}
    curves: dict[str, list[float]] = {}

    # The teacher, through the same text interface the pipeline uses (greedy, cached).
    tick = time.perf_counter()
    answers = context.ask([e.prompt for e in test], tag="evaluation", stop=(suite.TURN_SEPARATOR,))
    metrics["teacher"] = score([c.text for c in answers], test, evaluation)
    seconds["teacher_eval"] = time.perf_counter() - tick

    # The baseline: the human-written seed data only, in the evaluated format.
    tick = time.perf_counter()
    baseline = new_student()
    seed_data = evaluation.baseline_data(context.seeds, config.seed_tasks, config.seed)
    curves["baseline"] = context.fine_tune(
        baseline, seed_data, config.steps, "Baseline student (seed data only)"
    )
    metrics["baseline"] = score(
        student_answers(baseline, tokenizer, [e.prompt for e in test]), test, evaluation
    )
    seconds["baseline"] = time.perf_counter() - tick
    del baseline

    # The method's data pipeline (teacher calls cached), then the distilled student.
    tick = time.perf_counter()
    data = recipe.build_data(context)
    seconds["data_pipeline"] = time.perf_counter() - tick
    if not data.examples and data.student is None:
        counts = ", ".join(f"{k}: {v}" for k, v in context.stats.items())
        raise ValueError(
            f"{recipe.method_id}: the pipeline kept no training data ({counts}). The teacher's outputs "
            "were all filtered out: check that the teacher follows the suite's formats (see the "
            "'Black-box teacher access' page), or raise the pipeline's generation budget"
        )
    tick = time.perf_counter()
    if data.student is not None:
        distilled = data.student
        curves["distilled"] = context.stats.pop("curve", [])
    else:
        distilled = new_student()
        curves["distilled"] = context.fine_tune(
            distilled, data.examples, config.steps, f"Distilled student ({recipe.method_id})"
        )
    metrics["distilled"] = score(
        student_answers(distilled, tokenizer, [e.prompt for e in test]), test, evaluation
    )
    seconds["distill"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started

    resolved = {
        "method_id": recipe.method_id,
        "kind": "black-box pipeline",
        "hyperparameters": dict(recipe.hyperparameters),
        "pipeline": {**context.stats, "training_examples": len(data.examples)},
        "evaluation": {
            "name": recipe.evaluation,
            "description": evaluation.description,
            "examples": len(test),
        },
        "run": {**asdict(config)},
        "suite_version": suite.SUITE_VERSION,
        "teacher": {"id": teacher.identity()},
        "student": {"id": student_id, "parameters": count_parameters(distilled)},
        "seed_tasks": len(context.seeds),
        "baseline_examples": len(seed_data),
        "cache": str(cache_path),
        "device": str(device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    return PipelineResult(
        metrics=metrics, curves=curves, config=resolved, seconds=seconds, data=data.examples
    )


def write_data(path: Path, examples: Sequence[TrainingExample]) -> None:
    """The distilled training data as JSONL: ``{"segments": [[text, supervised], ...]}`` per line."""
    lines = [json.dumps({"segments": [list(s) for s in e.segments]}) for e in examples]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
