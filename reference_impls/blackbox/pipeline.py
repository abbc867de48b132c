"""Run a black-box distillation pipeline end to end: teacher vs. seed-only baseline vs. distilled.

A method module returns a `PipelineRecipe`: its *data pipeline* (``build_data``: how it asks the
teacher for text and filters what comes back) and which evaluation it is scored on. `run_pipeline`
does the rest the same way for every method, so their numbers are comparable:

1. the teacher, reached only through text (`TextTeacher`): the embedded instruction teacher, a
   local model folder, or any OpenAI-compatible endpoint (``--teacher-url``); every call goes
   through the persistent response cache, so a rerun makes no teacher call;
2. the *baseline*: the embedded student trained on the seed tasks only (the human-written data
   the pipeline starts from), same budget;
3. the *distilled* student: same initialisation and budget, trained on the pipeline's data;
4. the three scored exactly on held-out data (the teacher through the same text interface).

The pipeline gets a `PipelineContext`: ``ask`` (cached teacher calls), the seed tasks, a student
factory, fine-tuning and greedy student answers (for methods that put the student in the loop:
Lion, Personalized Distillation, selective reflection-tuning), and a ``stats`` dict for its
filter counts, which are reported with the metrics.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.common.generation import generate_responses
from reference_impls.common.metrics import exact_match, mean_rouge_l
from reference_impls.common.models import build_student, count_parameters
from reference_impls.common.tasks import Example, extract_answer
from reference_impls.common.teacher import cache_root
from reference_impls.common.tokenizer import build_tokenizer, encode_pair

from . import suite
from .access import cached_generate
from .http_teacher import OpenAICompatibleTeacher
from .instruct_teacher import InstructTeacherRecipe, instruct_teacher_dir, load_or_train_instruct_teacher
from .requests import ChatMessage, Completion, GenerationRequest
from .sft import TrainingExample, fine_tune
from .teacher import LocalTeacher, TextTeacher

DEFAULT_STEPS = 600
DEFAULT_SEED_TASKS = 24
# Seed data in another format than the instruction seed tasks is drawn from its own stream.
SEED_DATA_OFFSET = 1000
NLL_BATCH_SIZE = 64
DEFAULT_EVAL_SIZE = 240
MAX_NEW_TOKENS = 40  # long enough for an explained depth-3 answer or an annotation


@dataclass
class DistilledData:
    """What a pipeline produces: training examples, its filter counts, and optionally a student
    it already trained (loops such as Lion train inside the pipeline)."""

    examples: list[TrainingExample]
    student: PreTrainedModel | None = None


@dataclass(frozen=True)
class PipelineRecipe:
    """A black-box method: its data pipeline and the evaluation it is scored on.

    Attributes:
        method_id: Taxonomy id.
        build_data: ``(context) -> DistilledData``: the paper's data pipeline.
        evaluation: A key of ``EVALUATIONS``.
        hyperparameters: Resolved hyper-parameters, recorded in the run config.
    """

    method_id: str
    build_data: Callable[[PipelineContext], DistilledData]
    evaluation: str = "instructions"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    """How to run a pipeline; every default runs the embedded setting on CPU.

    Attributes:
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        steps: Optimizer steps of the baseline and the distilled student.
        seed: Student initialisation, data order and the teacher's sampling seeds.
        teacher: Local model folder (``from_pretrained``); ``None`` → the embedded instruction teacher.
        teacher_url: Base URL of an OpenAI-compatible endpoint (e.g. ``http://127.0.0.1:8765/v1``);
            takes precedence over ``teacher``.
        teacher_model: Model name sent to ``teacher_url``.
        api_key_env: Environment variable with the endpoint's key (read at call time, never stored).
        student: Local model folder for the student; ``None`` → the embedded student.
        seed_tasks: Number of human-written seed tasks (and of the baseline's seed examples when it is
            evaluated on another format: conversations, typed queries).
        eval_size: Held-out examples scored.
        batch_size: Sequences per optimizer step.
        learning_rate: Peak AdamW learning rate.
        cache: The response cache file; ``None`` → ``<cache root>/blackbox/responses.jsonl``.
        progress: Show progress bars.
    """

    device: str = "auto"
    steps: int = DEFAULT_STEPS
    seed: int = 0
    teacher: str | None = None
    teacher_url: str | None = None
    teacher_model: str = "kdatlas-embedded-teacher"
    api_key_env: str | None = "OPENAI_API_KEY"
    student: str | None = None
    seed_tasks: int = DEFAULT_SEED_TASKS
    eval_size: int = DEFAULT_EVAL_SIZE
    batch_size: int = 32
    learning_rate: float = 3e-3
    cache: str | None = None
    progress: bool = True


@dataclass
class PipelineContext:
    """What a pipeline may use. The teacher is reachable only through `ask` (text in, text out)."""

    teacher: TextTeacher
    cache_path: Path
    seeds: list[Example]
    tokenizer: PreTrainedTokenizerBase  # the student's
    config: PipelineConfig
    device: torch.device
    new_student: Callable[[], PreTrainedModel]
    stats: dict[str, Any] = field(default_factory=dict)

    def ask(
        self,
        prompts: Sequence[str | Sequence[ChatMessage]],
        *,
        tag: str,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = MAX_NEW_TOKENS,
        stop: Sequence[str] = (),
    ) -> list[Completion]:
        """One teacher completion per prompt, through the response cache.

        Sampled requests (``temperature > 0``) get seed ``hash(run seed, tag) + position``, so a
        rerun asks exactly the same requests (and finds them cached) while different calls
        (``tag``) and positions draw different samples.
        """
        base = _stable_int(f"{self.config.seed}-{tag}") if temperature > 0 else None
        requests = [
            GenerationRequest(
                prompt if isinstance(prompt, str) else tuple(prompt),
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=None if base is None else base + i,
                stop=tuple(stop),
            )
            for i, prompt in enumerate(prompts)
        ]
        completions = cached_generate(
            self.teacher,
            requests,
            self.cache_path,
            batch_size=64,
            progress=self.config.progress,
            description=f"teacher: {tag}",
        )
        tokens = sum((c.prompt_tokens or 0) + (c.completion_tokens or 0) for c in completions)
        self.stats["teacher_requests"] = self.stats.get("teacher_requests", 0) + len(requests)
        self.stats["teacher_tokens"] = self.stats.get("teacher_tokens", 0) + tokens
        return completions

    def fine_tune(
        self, model: PreTrainedModel, examples: Sequence[TrainingExample], steps: int, description: str
    ) -> list[float]:
        """Train ``model`` in place on ``examples`` (cross-entropy on their supervised segments)."""
        return fine_tune(
            model,
            self.tokenizer,
            examples,
            steps=steps,
            batch_size=self.config.batch_size,
            learning_rate=self.config.learning_rate,
            seed=self.config.seed,
            progress=self.config.progress,
            description=description,
        )

    def student_answers(self, model: PreTrainedModel, prompts: Sequence[str]) -> list[str]:
        """The student's greedy answers (cut at the end of a turn)."""
        return student_answers(model, self.tokenizer, prompts)

    @torch.no_grad()
    def response_nll(self, model: PreTrainedModel, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Mean token negative log-likelihood of each response given its prompt (``""`` for none),
        EOS excluded: ``log PPL(response | prompt)``."""
        model.eval()
        encoded = []
        for prompt, response in pairs:
            ids, labels = encode_pair(self.tokenizer, prompt, response)
            encoded.append((ids[:-1], labels[:-1]))  # drop EOS: the response text only
        values = [0.0] * len(encoded)
        # Right-padded batches of similar length: causal attention makes padding at the end
        # invisible to the real tokens, so each value equals its own single-sequence pass.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        for start in range(0, len(order), NLL_BATCH_SIZE):
            rows = order[start : start + NLL_BATCH_SIZE]
            width = max(len(encoded[i][0]) for i in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for row, i in enumerate(rows):
                row_ids, row_labels = encoded[i]
                ids[row, : len(row_ids)] = torch.tensor(row_ids)
                labels[row, : len(row_labels)] = torch.tensor(row_labels)
            attention = (torch.arange(width) < torch.tensor([len(encoded[i][0]) for i in rows])[:, None]).long()
            logits = model(ids.to(self.device), attention_mask=attention.to(self.device)).logits[:, :-1].float()
            targets = labels[:, 1:].to(self.device)
            token_nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
            )
            mask = targets != -100
            per_row = (token_nll * mask).sum(1) / mask.sum(1).clamp(min=1)
            for row, i in enumerate(rows):
                values[i] = float(per_row[row])
        return values


def student_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]
) -> list[str]:
    """Greedy answers, cut at the first turn separator (a conversation's end of turn)."""
    outputs = generate_responses(model, tokenizer, list(prompts), max_new_tokens=MAX_NEW_TOKENS)
    return [o.split(suite.TURN_SEPARATOR)[0] for o in outputs]


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


# ----------------------------------------------------------------------------------- evaluation


def _pairs(examples: Sequence[Example]) -> list[TrainingExample]:
    return [TrainingExample.single(e.prompt, e.response) for e in examples]


@dataclass(frozen=True)
class Evaluation:
    """A held-out test set and how predictions are read (``read``: the answer in an output).

    ``baseline_data(seeds, n, seed)`` is what the seed-only baseline trains on: ``n`` human-written
    examples in the format that is evaluated (by default the instruction seed tasks themselves),
    so that the baseline is not scored on a format it never saw.
    """

    examples: Callable[[int], list[Example]]
    read: Callable[[str], str] = lambda text: text
    by_group: Callable[[Example], str] | None = None
    description: str = ""
    baseline_data: Callable[[Sequence[Example], int, int], list[TrainingExample]] = (
        lambda seeds, n, seed: _pairs(seeds)
    )


def _under(system: str, example: Example) -> Example:
    return suite.with_prompt(example, suite.conversation_prompt([], example.prompt, system=system))


def _system_evaluation(system: str, description: str) -> Evaluation:
    """Held-out instructions asked under a system message; the answer after the last ``=>`` (or
    the whole output, when it has none) is scored. The baseline's seed tasks carry the same
    message, with the response that message asks for."""

    def seed_data(seeds: Sequence[Example], n: int, seed: int) -> list[TrainingExample]:
        respond = suite.explained if system == suite.EXPLAIN else (lambda e: e.response)
        return [TrainingExample.single(_under(system, e).prompt, respond(e)) for e in seeds]

    return Evaluation(
        lambda n: [_under(system, e) for e in suite.make_instructions("test", n)],
        read=extract_answer,
        by_group=lambda e: f"depth {suite.depth_of(e)}",
        description=description,
        baseline_data=seed_data,
    )


def _conversation_seed_data(seeds: Sequence[Example], n: int, seed: int) -> list[TrainingExample]:
    conversations = suite.make_conversations("train", n, seed=seed + SEED_DATA_OFFSET)
    return [TrainingExample.conversation(c.turns) for c in conversations]


def _find_seed_data(seeds: Sequence[Example], n: int, seed: int) -> list[TrainingExample]:
    return _pairs(suite.make_find_queries("train", n, seed=seed + SEED_DATA_OFFSET))


EVALUATIONS: dict[str, Evaluation] = {
    "instructions": Evaluation(
        lambda n: suite.make_instructions("test", n),
        by_group=lambda e: f"depth {suite.depth_of(e)}",
        description="held-out instructions, balanced over composition depths 1-3",
    ),
    "conversations": Evaluation(
        lambda n: [suite.last_turn_example(c) for c in suite.make_conversations("test", n)],
        by_group=lambda e: f"{e.label} turns",
        description="the last turn of held-out 2-3 turn conversations",
        baseline_data=_conversation_seed_data,
    ),
    "find": Evaluation(
        lambda n: suite.make_find_queries("test", n),
        by_group=lambda e: "negative queries" if e.response == suite.NO_ENTITY else "positive queries",
        description="typed entity queries over held-out passages, about half negative",
        baseline_data=_find_seed_data,
    ),
    "explained": _system_evaluation(
        suite.EXPLAIN,
        "held-out instructions under the 'explain' system prompt; the answer after '=>' is scored",
    ),
    "brief": _system_evaluation(
        suite.BRIEF, "held-out instructions under the 'brief' system prompt; the answer is scored"
    ),
}


def score(
    predictions: Sequence[str], examples: Sequence[Example], evaluation: Evaluation
) -> dict[str, float]:
    """Exact match (overall and per group) and character ROUGE-L of the read answers."""
    answers = [evaluation.read(p) for p in predictions]
    metrics = {"exact_match": exact_match(answers, examples)}
    if evaluation.by_group is not None:
        groups: dict[str, list[int]] = {}
        for i, example in enumerate(examples):
            groups.setdefault(evaluation.by_group(example), []).append(i)
        for name in sorted(groups):
            rows = groups[name]
            metrics[f"exact_match ({name})"] = exact_match(
                [answers[i] for i in rows], [examples[i] for i in rows]
            )
    metrics["rouge_l"] = mean_rouge_l(answers, examples)
    return metrics


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
