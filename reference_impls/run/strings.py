"""The steps of a run on the string suite, where the student sees the teacher *model*.

White-box recipes (a `DataSource` as their data: the dataset, the teacher's or the student's own
generations) run here. The teacher is the embedded string-suite teacher (shipped with the
package) or any ``from_pretrained`` model; both students start from the same weights and the same
supervised warm start; the baseline trains with plain cross-entropy on the dataset responses
(cached: it does not depend on the method); the three are scored by exact match, ROUGE-L and
teacher-forced distances to the teacher on held-out examples.

Embedded defaults on a 2-core CPU (teacher cached): well under a minute per run. What each
method does there, over seeds, is the committed leaderboard (``kdatlas leaderboard``): the
student is deliberately small, far below the teacher's exact match.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.cache import (
    cache_root,
    digest,
    fingerprint,
    read_json,
    source_digest,
    write_json_atomically,
)
from reference_impls.core.data_sources import OnlineSource, SourceContext
from reference_impls.core.models import build_decoder, build_student_config, count_parameters
from reference_impls.core.recipe import Recipe, RunConfig
from reference_impls.core.sampling import ModelSampler
from reference_impls.core.tokenizer import TOKENIZERS, pad_id
from reference_impls.core.training import (
    StepLoss,
    cross_entropy_objective,
    make_dataloader,
    needs_teacher,
    train_student,
)
from reference_impls.run.scoring import HELD_OUT_SET_METRICS, METRIC_NAMES, evaluate
from reference_impls.run.setup import make_accelerator, make_checkpoints, mixed_precision
from reference_impls.run.topk import offline_topk_loss
from reference_impls.tasks.strings import SUITE_VERSION, Example, load_jsonl, make_split
from reference_impls.teachers.embedded import TeacherRecipe, load_or_train_teacher, teacher_key

# The embedded budget: about 30 s of distillation on 2 CPU cores. A small training set (the
# low-data regime) is where soft targets help most.
DEFAULT_STEPS = 800
# Both students start from the same supervised warm start, as in the LLM papers (MiniLLM, GKD,
# DistiLLM start from an SFT checkpoint; f-DISTILL pre-distils). Bounded divergences (skew KL,
# JSD, TVD) give a vanishing signal to a randomly initialised student, so starting from scratch
# would compare learning speed rather than what each objective transfers.
DEFAULT_SFT_STEPS = 400
DEFAULT_EVAL_SIZE = 210
DEFAULT_MAX_NEW_TOKENS = 24
VALIDATION_SIZE = 64  # held-out examples for sources that adapt to a validation loss
# Cached baselines and teacher metrics are keyed by the source of the code that produces them.
_CODE = (Path(__file__).parent, Path(__file__).parents[1] / "core")


def check_same_vocabulary(
    teacher_tokenizer: PreTrainedTokenizerBase, student_tokenizer: PreTrainedTokenizerBase
) -> None:
    """Raise unless teacher and student tokenize identically (token-level KD compares vocabularies).

    Raises:
        ValueError: Naming both vocabulary sizes and the cross-tokenizer methods.
    """
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ValueError(
            f"the teacher's vocabulary ({len(teacher_tokenizer)} tokens) differs from the student's "
            f"({len(student_tokenizer)} tokens): token-level distillation needs one shared vocabulary. "
            "Use a student with the teacher's tokenizer, or a cross-tokenizer method: `uld` or `dskd`."
        )


class StringSuiteRun:
    """One run on the string suite; `reference_impls.run.run_recipe` calls the steps in order."""

    def __init__(self, recipe: Recipe, config: RunConfig, teacher_recipe: TeacherRecipe | None) -> None:
        if config.teacher_url is not None:
            raise ValueError(
                f"'{recipe.method_id}' trains on the teacher's logits: --teacher-url works with black-box "
                "methods only (e.g. alpaca, self-instruct); use --teacher PATH for a local model"
            )
        self.recipe, self.config = recipe, config
        self.teacher_recipe = teacher_recipe or TeacherRecipe()
        self.steps = config.steps if config.steps is not None else DEFAULT_STEPS
        self.sft_steps = config.sft_steps if config.sft_steps is not None else DEFAULT_SFT_STEPS
        self.eval_size = config.eval_size if config.eval_size is not None else DEFAULT_EVAL_SIZE
        self.max_new_tokens = config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        self.accelerator = make_accelerator(config, recipe.method_id)
        self.device = self.accelerator.device
        self.checkpoints = make_checkpoints(config)
        self.remote = {"trust_remote_code": config.trust_remote_code}
        # Online sources keep state while training (origin counts, the current rollout, a replay
        # buffer) and step losses may hold trained modules: each run works on its own copies, so
        # the recipe object stays as it was built and running it again gives the same outcome.
        self.data, self.loss = copy.deepcopy(recipe.data), copy.deepcopy(recipe.loss)
        self.source = self.data if isinstance(self.data, OnlineSource) else None
        self.code = source_digest(*_CODE)  # read once: the cache keys and the top-k file use it
        self.baseline_cached = False
        self.teacher_signals: dict[str, Any] = {}

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    # 1. The teacher. Under `accelerate launch` the main process trains the embedded teacher
    # alone while the others wait, then they load it from the cache.
    def load_teacher(self) -> None:
        config = self.config
        with self.accelerator.main_process_first():
            if config.teacher is None:
                self.teacher, self.tokenizer = load_or_train_teacher(
                    self.device, config.progress, recipe=self.teacher_recipe
                )
                self.teacher_id = f"embedded:{teacher_key(self.teacher_recipe)}"
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(config.teacher, **self.remote)
                model = AutoModelForCausalLM.from_pretrained(config.teacher, **self.remote)
                self.teacher = model.to(self.device).eval()
                self.teacher_id = f"{config.teacher}@{fingerprint(config.teacher)}"

    # 2. The students (the same initial weights for both) and the data; the shared warm start.
    def prepare_students(self) -> None:
        config, students = self.config, self.recipe.students
        self._split_data()
        if students.build is not None and config.student_family != "llama":
            raise ValueError(
                f"'{self.recipe.method_id}' builds its student from the (Llama-style) teacher, so "
                "--student-family does not apply; leave it at 'llama'"
            )
        if config.student is None and students.build is not None:
            self.student_tokenizer = self.tokenizer
            self.student_id = f"built:{digest({'teacher': self.teacher_id, **students.build.describe()})}"
            start = students.build(self.teacher, self.tokenizer, self.train, config.seed).to(self.device)
        elif config.student is None:
            cross = students.cross_tokenizer
            self.student_tokenizer = TOKENIZERS[students.tokenizer]() if cross else self.tokenizer
            student_config = build_student_config(self.student_tokenizer, config.student_family)
            self.student_id = f"embedded:{digest(student_config.to_diff_dict())}"
            start = build_decoder(student_config, config.seed).to(self.device)
        else:
            self.student_tokenizer = AutoTokenizer.from_pretrained(config.student, **self.remote)
            if not students.cross_tokenizer:
                check_same_vocabulary(self.tokenizer, self.student_tokenizer)
                self.student_tokenizer = self.tokenizer
            self.student_id = f"{config.student}@{fingerprint(config.student)}"
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                start = AutoModelForCausalLM.from_pretrained(config.student, **self.remote).to(self.device)
        self.student_size = count_parameters(start)
        self.shared_vocabulary = self.student_tokenizer is self.tokenizer
        # Shared tokenizer, but heads may be padded differently (e.g. different sizes of one family).
        different_heads = _output_size(self.teacher) != _output_size(start)
        self.vocab_size = len(self.tokenizer) if self.shared_vocabulary and different_heads else None
        if self.sft_steps:
            self._supervised(start, self.sft_steps, "Warm start (supervised fine-tuning, shared)")
            start = self.accelerator.unwrap_model(start)
        self.start = start

    def _split_data(self) -> None:
        """The suite, or a JSONL file whose tail is held out (and further held-out JSONL sets)."""
        config = self.config
        self.held_out_sets = _held_out_sets(config)
        if config.data is None:
            self.train = make_split("train", config.train_size)
            self.test = make_split("test", self.eval_size)
            # Held out for sources that adapt to a validation loss (DistiLLM): the next examples of
            # the (prefix-stable) training stream, never trained on.
            self.validation = make_split("train", config.train_size + VALIDATION_SIZE)[config.train_size :]
            self.data_id = f"suite:{SUITE_VERSION}:{config.train_size}"
            return
        examples = load_jsonl(config.data)
        if len(examples) < 2:
            raise ValueError(f"{config.data}: need at least 2 examples (training + held-out evaluation)")
        held_out = max(1, min(self.eval_size, len(examples) // 5))
        self.train, self.test = examples[:-held_out], examples[-held_out:]
        self.validation = self.train[-VALIDATION_SIZE:]  # a JSONL file has no spare examples: reuse a slice
        self.data_id = "+".join(f"{path}@{fingerprint(path)}" for path in (config.data, *config.eval_data))

    def _loader(
        self, responses: Sequence[str], examples: Sequence[Example] | None = None, paired: bool = False
    ) -> DataLoader:
        prompts = [e.prompt for e in (self.train if examples is None else examples)]
        return make_dataloader(
            self.student_tokenizer,
            prompts,
            responses,
            batch_size=self.config.batch_size,
            seed=self.config.seed,
            teacher_tokenizer=self.tokenizer if paired else None,
        )

    def _supervised(self, model: PreTrainedModel, steps: int, description: str) -> list[float]:
        """Plain cross-entropy on the dataset responses: the warm start and the baseline."""
        return train_student(
            model,
            self._loader([e.response for e in self.train]),
            cross_entropy_objective,
            steps,
            self.accelerator,
            learning_rate=self.config.learning_rate,
            vocab_size=self.vocab_size,
            progress=self.config.progress,
            description=description,
            gradient_accumulation=self.config.gradient_accumulation,
            checkpoints=self.checkpoints,
        )

    def _score(self, model: PreTrainedModel) -> dict[str, float]:
        tokenizer = self.student_tokenizer if model is not self.teacher else self.tokenizer
        metrics = evaluate(
            model,
            self.teacher,
            tokenizer,
            self.test,
            max_new_tokens=self.max_new_tokens,
            vocab_size=self.vocab_size,
            # The teacher's own row (cached for every student) always has its zero distances.
            distances_to_teacher=self.shared_vocabulary or model is self.teacher,
            suite=self.config.data is None,
        )
        for name, examples in self.held_out_sets.items():
            scored = evaluate(
                model, self.teacher, tokenizer, examples, max_new_tokens=self.max_new_tokens,
                vocab_size=self.vocab_size, distances_to_teacher=False, suite=False,
            )  # fmt: skip
            metrics |= {f"{metric} ({name})": scored[metric] for metric in HELD_OUT_SET_METRICS}
        return metrics

    def _cache_key(self) -> dict[str, Any]:
        return {
            "suite": SUITE_VERSION,
            "metrics": METRIC_NAMES,  # a new metric must not be read from an older cache entry
            "code": self.code,
            "teacher": self.teacher_id,
            "data": self.data_id,
            "eval_size": len(self.test),
            "max_new_tokens": self.max_new_tokens,
            "device": self.device.type,
        }

    # 3. The teacher scored (cached: it depends only on the teacher and the evaluation data).
    def score_teacher(self) -> dict[str, float]:
        if not self.is_main_process:
            return {}
        path = cache_root() / "runs" / f"teacher-{digest(self._cache_key())}.json"
        cached = read_json(path)
        if cached:
            return cached["metrics"]
        metrics = self._score(self.teacher)
        write_json_atomically(path, {"key": self._cache_key(), "metrics": metrics})
        return metrics

    # 4. The baseline: hard-label cross-entropy on the dataset responses (cached: method-independent).
    def train_baseline(self) -> tuple[list[float], dict[str, float]]:
        config = self.config
        key = {
            **self._cache_key(),
            "student": self.student_id,
            "steps": self.steps,
            "sft_steps": self.sft_steps,
            "seed": config.seed,
            "learning_rate": config.learning_rate,
            "batch_size": config.batch_size,
            "gradient_accumulation": config.gradient_accumulation,
            "precision": mixed_precision(config),
            "processes": self.accelerator.num_processes,
        }
        path = cache_root() / "runs" / f"baseline-{digest(key)}.json"
        self.accelerator.wait_for_everyone()  # every process must take the same branch below
        cached = read_json(path)
        self.baseline_cached = bool(cached)
        if cached:
            return cached["curve"], cached["metrics"]
        baseline = copy.deepcopy(self.start)
        curve = self._supervised(baseline, self.steps, "Baseline student (cross-entropy, no teacher)")
        metrics: dict[str, float] = {}
        if self.is_main_process:
            metrics = self._score(self.accelerator.unwrap_model(baseline))
            write_json_atomically(path, {"key": key, "metrics": metrics, "curve": curve})
        return curve, metrics

    # 5. The distilled student's sequences: the recipe's data source.
    def distillation_data(self) -> list[str]:
        context = SourceContext(teacher=self.teacher, tokenizer=self.tokenizer, max_new_tokens=self.max_new_tokens)
        return self.data.responses(self.train, context)

    # 6. The distilled student: the recipe's loss on those sequences, same start and budget.
    def train_distilled(self, responses: list[str]) -> list[float]:
        recipe, config = self.recipe, self.config
        self.distilled = copy.deepcopy(self.start)
        sampler = None
        if self.source is not None:
            sampler = ModelSampler(
                student=self.distilled,
                teacher=self.teacher,
                eos_id=self.student_tokenizer.eos_token_id,
                pad_id=pad_id(self.student_tokenizer),
                max_new_tokens=self.max_new_tokens,
                temperature=self.source.temperature,
                teacher_mix=getattr(self.source, "teacher_mix", 0.0),
                seed=config.seed,
                vocab_size=self.vocab_size,
            )
        loss, teacher = self.loss, self.teacher if needs_teacher(self.loss) else None
        if config.teacher_topk is not None:
            loss, self.teacher_signals = offline_topk_loss(
                recipe.method_id,
                loss,
                self.source is not None or isinstance(loss, StepLoss),
                k=config.teacher_topk,
                teacher=self.teacher,
                identity={"teacher": self.teacher_id, "data": self.data_id, "code": self.code},
                responses=responses,
                loader=self._loader(responses),
                batch_size=config.batch_size,
                vocab_size=self.vocab_size,
                progress=config.progress,
            )
            teacher = None
        if isinstance(loss, StepLoss):
            # E.g. DSKD's projectors, trained with the student: initialised from the run's seed, not
            # from whatever the global RNG holds after the earlier steps of this process.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                loss.prepare(self.distilled, self.teacher)
        validation = self.validation
        return train_student(
            self.distilled,
            self._loader(responses, paired=recipe.students.cross_tokenizer),
            loss,
            self.steps,
            self.accelerator,
            teacher=teacher,
            learning_rate=config.learning_rate,
            vocab_size=self.vocab_size,
            source=self.source,
            sampler=sampler,
            validation_batches=self._loader([e.response for e in validation], validation) if self.source else None,
            progress=config.progress,
            description=f"Distilled student ({recipe.method_id})",
            gradient_accumulation=config.gradient_accumulation,
            checkpoints=self.checkpoints,
        )

    # 7. The distilled student scored.
    def score_distilled(self) -> dict[str, float]:
        if not self.is_main_process:
            return {}
        return self._score(self.accelerator.unwrap_model(self.distilled))

    def distilled_student(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The distilled student (unwrapped from any distributed wrapper) and its tokenizer, without
        what a step loss attached to it for training (DSKD's projectors)."""
        student = self.accelerator.unwrap_model(self.distilled)
        if isinstance(self.loss, StepLoss):
            self.loss.release(student)
        return student, self.student_tokenizer

    # 8. What the run config records.
    def describe(self) -> dict[str, Any]:
        source = self.source
        return {
            "data_source": {
                **self.data.describe(),
                **({"origins": dict(getattr(source, "origins", {}))} if source is not None else {}),
            },
            "uses_teacher_logits": needs_teacher(self.loss),
            **({"teacher_signals": self.teacher_signals} if self.teacher_signals else {}),
            "run": {**asdict(self.config), "steps": self.steps, "sft_steps": self.sft_steps},
            "suite_version": SUITE_VERSION,
            "teacher": {"id": self.teacher_id, "parameters": count_parameters(self.teacher)},
            "student": {"id": self.student_id, "parameters": self.student_size},
            "data": {
                "id": self.data_id,
                "train_examples": len(self.train),
                "eval_examples": len(self.test),
                **({"held_out_sets": {n: len(e) for n, e in self.held_out_sets.items()}} if self.held_out_sets else {}),
            },
            "device": str(self.device),
            "precision": mixed_precision(self.config),
            "processes": self.accelerator.num_processes,
            "baseline_cached": self.baseline_cached,
        }


def _held_out_sets(config: RunConfig) -> dict[str, list[Example]]:
    """``RunConfig.eval_data``: each file's examples under its stem (``dolly.jsonl`` → ``dolly``).

    Raises:
        ValueError: Without ``data`` (the suite has its own held-out split), or when two files
            share a stem (their metrics would share a name).
    """
    if not config.eval_data:
        return {}
    if config.data is None:
        raise ValueError("--eval-data adds held-out JSONL sets to a run on JSONL data: give --data FILE.jsonl too")
    sets: dict[str, list[Example]] = {}
    for path in config.eval_data:
        name = Path(path).stem
        if name in sets:
            raise ValueError(f"two --eval-data files are both named {name!r}: their metrics would collide; rename one")
        sets[name] = load_jsonl(path)
    return sets


def _output_size(model: PreTrainedModel) -> int:
    return model.get_output_embeddings().weight.shape[0]
