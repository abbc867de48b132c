"""The steps of a run on the instruction suite, where the student sees only the teacher's *text*.

Black-box recipes (a `TextPipeline` as their data) run here. The teacher is reached through text
only (`TextTeacher`): the embedded instruction teacher, a local model folder, or any
OpenAI-compatible endpoint (``--teacher-url``); every call goes through the persistent response
cache, so a rerun makes no teacher call. The baseline is the embedded student trained on the
human-written seed data only, in the evaluated format, with the same budget; the distilled
student has the same initialisation and budget and trains on the pipeline's data; the three are
scored exactly on held-out data (the teacher through the same text interface).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from reference_impls.black_box.pipeline import (
    EVALUATIONS,
    MAX_NEW_TOKENS,
    DistilledData,
    PipelineContext,
    first_turn,
    score,
    student_answers,
)
from reference_impls.core.cache import cache_root
from reference_impls.core.metrics import oracle_kl
from reference_impls.core.models import build_student, count_parameters
from reference_impls.core.recipe import Recipe, RunConfig
from reference_impls.core.robustness import attack_success_rate
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.run.setup import make_accelerator, make_checkpoints, mixed_precision
from reference_impls.tasks import instructions as suite
from reference_impls.tasks.strings import edited
from reference_impls.teachers.http import OpenAICompatibleTeacher
from reference_impls.teachers.instruct import (
    InstructTeacherRecipe,
    instruct_teacher_dir,
    load_or_train_instruct_teacher,
)
from reference_impls.teachers.text import LocalTeacher, TextTeacher

DEFAULT_STEPS = 600
DEFAULT_EVAL_SIZE = 240


def resolve_teacher(config: RunConfig, device: torch.device, teacher_recipe: InstructTeacherRecipe) -> TextTeacher:
    """The teacher the config names: an HTTP endpoint, a local folder, or the embedded one."""
    if config.teacher_url is not None:
        return OpenAICompatibleTeacher(config.teacher_url, config.teacher_model, config.api_key_env)
    if config.teacher is not None:
        return LocalTeacher.from_pretrained(config.teacher, device=device)
    model, tokenizer = load_or_train_instruct_teacher(device, config.progress, recipe=teacher_recipe)
    return LocalTeacher(model, tokenizer, label=f"embedded/{instruct_teacher_dir(teacher_recipe).name}")


class InstructionSuiteRun:
    """One run on the instruction suite; `reference_impls.run.run_recipe` calls the steps in order."""

    def __init__(
        self,
        recipe: Recipe,
        config: RunConfig,
        teacher_recipe: InstructTeacherRecipe | None,
        teacher: TextTeacher | None,
    ) -> None:
        not_applicable = {
            "--data": config.data,
            "--eval-data": config.eval_data or None,
            "--sft-steps": config.sft_steps,
            "--teacher-topk": config.teacher_topk,
        }
        given = [flag for flag, value in not_applicable.items() if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} do not apply to '{recipe.method_id}': a black-box pipeline generates its "
                "own data from the teacher's text (use --teacher, --teacher-url, --steps, --seed, --set)"
            )
        self.recipe, self.config = recipe, config
        self.teacher_recipe = teacher_recipe or InstructTeacherRecipe()
        self.given_teacher = teacher
        self.evaluation = EVALUATIONS[recipe.evaluation]
        self.steps = config.steps if config.steps is not None else DEFAULT_STEPS
        self.eval_size = config.eval_size if config.eval_size is not None else DEFAULT_EVAL_SIZE
        self.accelerator = make_accelerator(config, recipe.method_id)
        self.device = self.accelerator.device
        self.cache_path = Path(config.cache) if config.cache else cache_root() / "blackbox" / "responses.jsonl"

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    # 1. The teacher, through text only.
    def load_teacher(self) -> None:
        self.teacher = self.given_teacher or resolve_teacher(self.config, self.device, self.teacher_recipe)

    # 2. The students: a factory of identically initialised students, and the pipeline's context.
    def prepare_students(self) -> None:
        config, device = self.config, self.device
        if config.student is None:
            self.tokenizer = build_tokenizer()
            family = config.student_family
            self.student_id = "embedded-student" if family == "llama" else f"embedded-student-{family}"

            def new_student() -> PreTrainedModel:
                return build_student(self.tokenizer, config.seed, family).to(device)

        else:
            self.tokenizer = AutoTokenizer.from_pretrained(config.student)
            self.student_id = config.student

            def new_student() -> PreTrainedModel:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(config.seed)
                    return AutoModelForCausalLM.from_pretrained(config.student).to(device)

        self.new_student = new_student
        self.context = PipelineContext(
            teacher=self.teacher,
            cache_path=self.cache_path,
            seeds=suite.seed_tasks(config.seed_tasks, seed=config.seed),
            tokenizer=self.tokenizer,
            config=config,
            steps=self.steps,
            device=device,
            new_student=new_student,
            checkpoints=make_checkpoints(config),
        )
        self.test = self.evaluation.examples(self.eval_size)
        self.ood = self.evaluation.ood(self.eval_size) if self.evaluation.ood else []

    def _score(self, model: PreTrainedModel) -> dict[str, float]:
        predictions = student_answers(model, self.tokenizer, [e.prompt for e in self.test])
        ood_predictions = student_answers(model, self.tokenizer, [e.prompt for e in self.ood]) if self.ood else []
        return (
            score(predictions, self.test, self.evaluation)
            | self._golden_and_robustness(model, self.tokenizer, [self.evaluation.read(p) for p in predictions])
            | self._ood_scores(ood_predictions)
        )

    def _ood_scores(self, predictions: list[str]) -> dict[str, float]:
        """Exact match and ROUGE-L on the evaluation's OOD split (none where it has no such split)."""
        if not self.ood:
            return {}
        scored = score(predictions, self.ood, self.evaluation)
        return {"ood_exact_match": scored["exact_match"], "ood_rouge_l": scored["rouge_l"]}

    def _golden_and_robustness(self, model: PreTrainedModel, tokenizer: Any, answers: list[str]) -> dict[str, float]:
        """The KL from the suite's oracle where the evaluation is ``golden`` (its responses are
        bare answers, not a rationale first as under the 'explain' system prompt), and the attack
        success rate where the prompts are plain ``"<task>: <input> ="`` (not conversations or
        system prompts, which the prompt edits would break)."""
        metrics = {}
        if self.evaluation.golden and all(e.response in e.answers for e in self.test):
            metrics["oracle_kl"] = oracle_kl(model, tokenizer, self.test)
        if all(edited(e, 0, 0).prompt == e.prompt for e in self.test):
            rate = attack_success_rate(
                model, tokenizer, self.test, answers, max_new_tokens=MAX_NEW_TOKENS, answer_of=first_turn
            )
            if rate is not None:  # None: nothing answered correctly, nothing to attack
                metrics["attack_success_rate"] = rate
        return metrics

    # 3. The teacher scored, through the same text interface the pipeline uses (greedy, cached).
    # Only the main process evaluates.
    def score_teacher(self) -> dict[str, float]:
        if not self.is_main_process:
            return {}
        pipeline_cost = dict(self.context.stats)  # scoring the teacher is not the pipeline's cost
        prompts = [e.prompt for e in self.test]
        answers = self.context.ask(prompts, tag="evaluation", stop=(suite.TURN_SEPARATOR,))
        metrics = score([c.text for c in answers], self.test, self.evaluation)
        if self.ood:
            ood_answers = self.context.ask([e.prompt for e in self.ood], tag="evaluation", stop=(suite.TURN_SEPARATOR,))
            metrics |= self._ood_scores([c.text for c in ood_answers])
        if isinstance(self.teacher, LocalTeacher):  # an endpoint gives text, not the model's likelihoods
            read = [self.evaluation.read(c.text) for c in answers]
            metrics |= self._golden_and_robustness(self.teacher.model, self.teacher.tokenizer, read)
        self.context.stats = pipeline_cost
        return metrics

    # 4. The baseline: the human-written seed data only, in the evaluated format.
    def train_baseline(self) -> tuple[list[float], dict[str, float]]:
        baseline = self.new_student()
        self.seed_data = self.evaluation.baseline_data(self.context.seeds, self.config.seed_tasks, self.config.seed)
        description = "Baseline student (seed data only)"
        curve = self.context.fine_tune(baseline, self.seed_data, self.steps, description, accelerator=self.accelerator)
        baseline = self.accelerator.unwrap_model(baseline)
        return curve, self._score(baseline) if self.is_main_process else {}

    # 5. The method's data pipeline (teacher calls cached). Under `accelerate launch` the main
    # process runs it first (its teacher calls fill the cache, its inner training checkpoints),
    # then the others run it from the cache: every process trains on the same data.
    def distillation_data(self) -> DistilledData:
        with self.accelerator.main_process_first():
            data = self.recipe.data.build(self.context)
        if not data.examples and data.student is None:
            counts = ", ".join(f"{k}: {v}" for k, v in self.context.stats.items())
            raise ValueError(
                f"{self.recipe.method_id}: the pipeline kept no training data ({counts}). The teacher's "
                "outputs were all filtered out: check that the teacher follows the suite's formats (see "
                "the 'Black-box teacher access' page), or raise the pipeline's generation budget"
            )
        self.data = data
        return data

    # 6. The distilled student: the recipe's loss on the pipeline's data, same start and budget
    # (or the student a loop such as Lion already trained inside the pipeline).
    def train_distilled(self, data: DistilledData) -> list[float]:
        if data.student is not None:
            self.distilled = data.student
            return self.context.stats.pop("curve", [])
        self.distilled = self.new_student()
        description = f"Distilled student ({self.recipe.method_id})"
        curve = self.context.fine_tune(
            self.distilled, data.examples, self.steps, description, loss=self.recipe.loss, accelerator=self.accelerator
        )
        self.distilled = self.accelerator.unwrap_model(self.distilled)
        return curve

    # 7. The distilled student scored.
    def score_distilled(self) -> dict[str, float]:
        return self._score(self.distilled) if self.is_main_process else {}

    def distilled_student(self) -> tuple[PreTrainedModel, Any]:
        """The distilled student and its tokenizer."""
        return self.distilled, self.tokenizer

    # 8. What the run config records.
    def describe(self) -> dict[str, Any]:
        return {
            "kind": "black-box pipeline",
            "pipeline": {**self.context.stats, "training_examples": len(self.data.examples)},
            "evaluation": {
                "name": self.recipe.evaluation,
                "description": self.evaluation.description,
                "examples": len(self.test),
            },
            "run": {**asdict(self.config), "steps": self.steps},
            "suite_version": suite.SUITE_VERSION,
            "teacher": {"id": self.teacher.identity()},
            "student": {"id": self.student_id, "parameters": count_parameters(self.distilled)},
            "seed_tasks": len(self.context.seeds),
            "baseline_examples": len(self.seed_data),
            "cache": str(self.cache_path),
            "device": str(self.device),
            "precision": mixed_precision(self.config),
            "processes": self.accelerator.num_processes,
        }
