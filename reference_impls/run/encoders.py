"""The steps of a run on the classification suite: BERT-era encoders, the student sees the teacher model.

The task is the string suite's classification view (`reference_impls.tasks.strings.classification_view`:
which operation turned the input into the output, 7 classes), in the low-data regime where the
hint/feature papers report their largest gains: the student learns from ``train_size`` labelled
texts (300). The teacher is the embedded encoder classifier (4 layers × 128, pre-trained with
masked LM, then fine-tuned; `reference_impls.teachers.encoder`) or any local
``from_pretrained`` sequence classifier; the student a 2 × 64 BERT with the teacher's 4 heads,
from scratch, or built from the teacher by the recipe. The baseline trains the same student with
cross-entropy on the labels (cached); the three are scored by accuracy on held-out texts (the
labels are the generator's truth: the golden metric), on the OOD split (longer words), and by
closeness to the teacher (KL between class distributions, agreement of predictions: the proxy).
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from reference_impls.core.cache import (
    cache_root,
    digest,
    fingerprint,
    read_json,
    source_digest,
    write_json_atomically,
)
from reference_impls.core.encoders import LabelCrossEntropy, text_batches
from reference_impls.core.models import build_encoder_config, count_parameters
from reference_impls.core.recipe import Recipe, RunConfig
from reference_impls.core.training import StepLoss, needs_teacher, train_student
from reference_impls.run.setup import make_accelerator, make_checkpoints, mixed_precision
from reference_impls.tasks.strings import SUITE_VERSION, TASK_NAMES, classification_view, make_split
from reference_impls.teachers.encoder import (
    EncoderTeacherRecipe,
    accuracy,
    encoder_keys,
    load_or_train_encoder_teachers,
)

DEFAULT_ENCODER_STEPS = 400
DEFAULT_ENCODER_EVAL_SIZE = 420
CLASSIFICATION_METRICS = ("accuracy", "ood_accuracy", "class_kl_to_teacher", "teacher_agreement")
# Cached baselines are keyed by the source of the code that produces them.
_CODE = (Path(__file__), Path(__file__).parents[1] / "core", Path(__file__).parents[1] / "teachers")


@torch.no_grad()
def score_classifier(
    model: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    test: list[tuple[str, int]],
    ood: list[tuple[str, int]],
) -> dict[str, float]:
    """Accuracy on ``test`` and ``ood`` against the true labels, and on ``test`` the mean
    KL(teacher ‖ model) between class distributions and the share of predictions that agree."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    kl, agree, right = 0.0, 0, 0
    texts, labels = [t for t, _ in test], [label for _, label in test]
    for batch in text_batches(tokenizer, texts, labels, batch_size=128, shuffle=False):
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        log_q = model(**inputs).logits.float().log_softmax(-1)
        log_p = teacher(**inputs).logits.float().log_softmax(-1)
        kl += float((log_p.exp() * (log_p - log_q)).sum())
        agree += int((log_p.argmax(-1) == log_q.argmax(-1)).sum())
        right += int((log_q.argmax(-1) == batch["label"].to(device)).sum())
    metrics = {
        "accuracy": right / len(test),
        "ood_accuracy": accuracy(model, tokenizer, ood),
        "class_kl_to_teacher": kl / len(test),
        "teacher_agreement": agree / len(test),
    }
    model.train(was_training)
    return metrics


class EncoderSuiteRun:
    """One run on the classification suite; `reference_impls.run.run_recipe` calls the steps in order."""

    def __init__(
        self, recipe: Recipe, config: RunConfig, teacher_recipe: EncoderTeacherRecipe | None
    ) -> None:
        refused = {"--teacher-url": config.teacher_url, "--data": config.data, "--eval-data": config.eval_data or None,
                   "--teacher-topk": config.teacher_topk}  # fmt: skip
        for flag, value in refused.items():
            if value is not None:
                raise ValueError(
                    f"'{recipe.method_id}' runs on the classification suite, where {flag} does not apply yet; "
                    "use --teacher/--student with local sequence classifiers"
                )
        if config.student_family != "llama":
            raise ValueError(
                "--student-family applies to the decoder students; the encoder student is BERT-style"
            )
        self.recipe, self.config = recipe, config
        self.teacher_recipe = teacher_recipe or EncoderTeacherRecipe()
        self.steps = config.steps if config.steps is not None else DEFAULT_ENCODER_STEPS
        self.eval_size = config.eval_size if config.eval_size is not None else DEFAULT_ENCODER_EVAL_SIZE
        self.accelerator = make_accelerator(config, recipe.method_id)
        self.device = self.accelerator.device
        self.checkpoints = make_checkpoints(config)
        self.remote = {"trust_remote_code": config.trust_remote_code}
        self.loss = copy.deepcopy(recipe.loss)  # step losses may hold trained modules (projectors)
        self.code = source_digest(*_CODE)
        self.baseline_cached = False

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    # 1. The teacher: the embedded classifier (and its pre-trained masked LM), or a local one.
    def load_teacher(self) -> None:
        config = self.config
        with self.accelerator.main_process_first():
            if config.teacher is None:
                self.masked_lm, self.teacher, self.tokenizer = load_or_train_encoder_teachers(
                    self.device, config.progress, recipe=self.teacher_recipe
                )
                self.teacher_id = f"embedded:{encoder_keys(self.teacher_recipe)['classifier']}"
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(config.teacher, **self.remote)
                model = AutoModelForSequenceClassification.from_pretrained(config.teacher, **self.remote)
                self.teacher, self.masked_lm = model.to(self.device).eval(), None
                self.teacher_id = f"{config.teacher}@{fingerprint(config.teacher)}"
        if self.teacher.config.num_labels != len(TASK_NAMES):
            raise ValueError(
                f"the teacher classifies into {self.teacher.config.num_labels} labels; the suite has "
                f"{len(TASK_NAMES)} ({', '.join(TASK_NAMES)})"
            )

    # 2. The students (the same initial weights for both) and the data.
    def prepare_students(self) -> None:
        config, students = self.config, self.recipe.students
        self.train = classification_view(make_split("train", config.train_size))
        self.test = classification_view(make_split("test", self.eval_size))
        self.ood = classification_view(make_split("ood", self.eval_size))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if config.student is not None:
                start = AutoModelForSequenceClassification.from_pretrained(
                    config.student, num_labels=len(TASK_NAMES), **self.remote
                )
                self.student_id = f"{config.student}@{fingerprint(config.student)}"
            elif students.build is not None:
                start = students.build(self.teacher, self.tokenizer, self.train, config.seed)
                self.student_id = f"built:{digest({'teacher': self.teacher_id, **students.build.describe()})}"
            else:
                student_config = build_encoder_config(
                    self.tokenizer, num_labels=len(TASK_NAMES), teacher=False
                )
                start = AutoModelForSequenceClassification.from_config(student_config)
                self.student_id = f"embedded:{digest(student_config.to_diff_dict())}"
        self.start = start.to(self.device)
        self.student_size = count_parameters(self.start)

    def _batches(self) -> Any:
        texts, labels = [t for t, _ in self.train], [label for _, label in self.train]
        return text_batches(
            self.tokenizer, texts, labels, batch_size=self.config.batch_size, seed=self.config.seed
        )

    def _train(
        self, model: PreTrainedModel, loss: Any, teacher: PreTrainedModel | None, description: str
    ) -> list[float]:
        config = self.config
        return train_student(
            model, self._batches(), loss, self.steps, self.accelerator, teacher=teacher,
            learning_rate=config.learning_rate, progress=config.progress, description=description,
            gradient_accumulation=config.gradient_accumulation, checkpoints=self.checkpoints,
        )  # fmt: skip

    def _score(self, model: PreTrainedModel) -> dict[str, float]:
        return score_classifier(model, self.teacher, self.tokenizer, self.test, self.ood)

    # 3. The teacher scored.
    def score_teacher(self) -> dict[str, float]:
        return self._score(self.teacher) if self.is_main_process else {}

    # 4. The baseline: cross-entropy on the labels (cached: method-independent).
    def train_baseline(self) -> tuple[list[float], dict[str, float]]:
        config = self.config
        key = {
            "suite": SUITE_VERSION, "metrics": CLASSIFICATION_METRICS, "code": self.code, "teacher": self.teacher_id,
            "student": self.student_id, "train_size": config.train_size, "eval_size": self.eval_size,
            "steps": self.steps, "seed": config.seed, "learning_rate": config.learning_rate,
            "batch_size": config.batch_size, "gradient_accumulation": config.gradient_accumulation,
            "precision": mixed_precision(config), "processes": self.accelerator.num_processes,
            "device": self.device.type,
        }  # fmt: skip
        path = cache_root() / "runs" / f"encoder-baseline-{digest(key)}.json"
        self.accelerator.wait_for_everyone()
        cached = read_json(path)
        self.baseline_cached = bool(cached)
        if cached:
            return cached["curve"], cached["metrics"]
        baseline = copy.deepcopy(self.start)
        curve = self._train(
            baseline, LabelCrossEntropy(), None, "Baseline student (cross-entropy on the labels)"
        )
        metrics: dict[str, float] = {}
        if self.is_main_process:
            metrics = self._score(self.accelerator.unwrap_model(baseline))
            write_json_atomically(path, {"key": key, "metrics": metrics, "curve": curve})
        return curve, metrics

    # 5. The distilled student's data: the labelled training texts.
    def distillation_data(self) -> list[tuple[str, int]]:
        return self.train

    # 6. The distilled student: the recipe's loss, same start and budget.
    def train_distilled(self, data: list[tuple[str, int]]) -> list[float]:
        self.distilled = copy.deepcopy(self.start)
        if isinstance(self.loss, StepLoss):
            with torch.random.fork_rng(devices=[]):  # projectors start from the run's seed
                torch.manual_seed(self.config.seed)
                self.loss.prepare(self.distilled, self.teacher)
        teacher = self.teacher if needs_teacher(self.loss) else None
        return self._train(self.distilled, self.loss, teacher, f"Distilled student ({self.recipe.method_id})")

    # 7. The distilled student scored.
    def score_distilled(self) -> dict[str, float]:
        return self._score(self.accelerator.unwrap_model(self.distilled)) if self.is_main_process else {}

    def distilled_student(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        student = self.accelerator.unwrap_model(self.distilled)
        if isinstance(self.loss, StepLoss):
            self.loss.release(student)
        return student, self.tokenizer

    # 8. What the run config records.
    def describe(self) -> dict[str, Any]:
        return {
            "data_source": self.recipe.data.describe(),
            "evaluation": {
                "name": self.recipe.evaluation,
                "description": __doc__.splitlines()[0],
                "examples": len(self.test),
            },
            "uses_teacher_logits": needs_teacher(self.loss),
            "run": {**asdict(self.config), "steps": self.steps},
            "suite_version": SUITE_VERSION,
            "teacher": {"id": self.teacher_id, "parameters": count_parameters(self.teacher)},
            "student": {"id": self.student_id, "parameters": self.student_size},
            "data": {
                "train_examples": len(self.train),
                "eval_examples": len(self.test),
                "ood_examples": len(self.ood),
            },
            "device": str(self.device),
            "precision": mixed_precision(self.config),
            "processes": self.accelerator.num_processes,
            "baseline_cached": self.baseline_cached,
        }
