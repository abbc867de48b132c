"""Run a distillation recipe end to end: teacher vs. baseline student vs. distilled student.

A method module returns a `Recipe` (its objective and data source); `run_recipe`
does everything else the same way for every method, so their numbers are comparable:

1. load the teacher (embedded: trained on first use and cached; or ``from_pretrained``);
2. train the *baseline*: the student initialised from the run's seed, trained with plain
   cross-entropy on the dataset responses, same budget (cached on disk: it does not depend on
   the method);
3. train the *distilled* student: same initialisation, same budget, the recipe's objective on the
   recipe's data source;
4. evaluate the three on held-out examples: exact match, ROUGE-L, token-level KL to the teacher.

Embedded defaults on a 2-core CPU (teacher cached): about 40 s, or 25 s when the baseline is
cached too. With a forward-KL objective the distilled student ends closer to the teacher than
the baseline (token KL about 1.26-1.47 vs 1.44-1.56 over seeds 0-2); exact match is about
0.25-0.29 for both, far below the teacher's 0.80: the student is deliberately small.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.data_sources import OnlineSource, SourceContext
from reference_impls.core.generation import generate_responses
from reference_impls.core.metrics import exact_match, mean_rouge_l, token_distances_to_teacher
from reference_impls.core.models import build_decoder, build_student_config, count_parameters
from reference_impls.core.recipe import Recipe
from reference_impls.core.sampling import ModelSampler
from reference_impls.core.tokenizer import TOKENIZERS, pad_id
from reference_impls.core.training import (
    StepLoss,
    aligned_logits,
    cross_entropy_objective,
    make_dataloader,
    train_student,
)
from reference_impls.tasks.strings import SUITE_VERSION, Example, load_jsonl, make_split
from reference_impls.teachers.embedded import TeacherRecipe, cache_root, load_or_train_teacher, teacher_key

# The embedded budget: about 30 s of distillation on 2 CPU cores. A small training set (the
# low-data regime) is where soft targets help most.
DEFAULT_STEPS = 800
# Both students start from the same supervised warm start, as in the LLM papers (MiniLLM, GKD,
# DistiLLM start from an SFT checkpoint; f-DISTILL pre-distils). Bounded divergences (skew KL,
# JSD, TVD) give a vanishing signal to a randomly initialised student, so starting from scratch
# would compare learning speed rather than what each objective transfers.
DEFAULT_SFT_STEPS = 400
DEFAULT_TRAIN_SIZE = 1000
VALIDATION_SIZE = 64  # held-out examples for sources that adapt to a validation loss
METRIC_NAMES = (
    "exact_match",
    "token_kl_to_teacher",
    "token_reverse_kl_to_teacher",
    "token_tvd_to_teacher",
    "rouge_l",
)
# Metric name → the teacher-forced distance it reports (see metrics.token_divergence_to_teacher).
DISTANCE_METRICS = {
    "token_kl_to_teacher": "forward-kl",
    "token_reverse_kl_to_teacher": "reverse-kl",
    "token_tvd_to_teacher": "total-variation",
}


@dataclass
class RunConfig:
    """How to run a recipe; every default runs the embedded toy setting on CPU or GPU.

    Attributes:
        device: ``"auto"`` (GPU if available), ``"cpu"`` or ``"cuda"``.
        steps: Optimizer steps for baseline and distilled student; ``None`` → ``DEFAULT_STEPS``.
        sft_steps: Cross-entropy steps on the dataset responses that produce the shared starting
            point of both students; ``None`` → ``DEFAULT_SFT_STEPS``, 0 → start from the
            initialisation (or the ``student`` checkpoint) as it is.
        seed: Student initialisation and data order (the baseline uses the same).
        teacher: Local path or hub id for ``from_pretrained``; ``None`` → the embedded teacher.
        student: Local path or hub id; ``None`` → the embedded tiny student (built on the
            teacher's tokenizer).
        data: JSONL file with ``prompt``/``response`` lines; ``None`` → the task suite. The last
            ``eval_size`` lines (at most a fifth of the file) are held out for evaluation.
        batch_size: Sequences per optimizer step (per process).
        learning_rate: Peak AdamW learning rate.
        eval_size: Held-out examples used for evaluation.
        train_size: Suite training examples (ignored with ``data``).
        max_new_tokens: Generation limit at evaluation and for generated data sources.
        trust_remote_code: Passed to ``from_pretrained``; off unless asked for.
        teacher_topk: Train from the teacher's top-k log-probs stored once on disk (safetensors,
            cached) instead of running the teacher at every step; ``None`` runs it. Token-level
            forward/reverse KL recipes on a static data source only.
        progress: Show progress bars.
    """

    device: str = "auto"
    steps: int | None = None
    sft_steps: int | None = None
    seed: int = 0
    teacher: str | None = None
    student: str | None = None
    data: str | None = None
    batch_size: int = 32
    learning_rate: float = 3e-3
    eval_size: int = 210
    train_size: int = DEFAULT_TRAIN_SIZE
    max_new_tokens: int = 24
    trust_remote_code: bool = False
    teacher_topk: int | None = None
    progress: bool = True


@dataclass
class RunResult:
    """Metrics, loss curves, the resolved config and timings of one run.

    Attributes:
        metrics: ``{"teacher" | "baseline" | "distilled": {metric name: value}}`` with the
            metric names in ``METRIC_NAMES``. Empty on non-main processes.
        curves: ``{"baseline": [...], "distilled": [...]}`` training loss per step.
        config: Fully resolved, JSON-serialisable configuration.
        seconds: Wall-clock seconds per phase.
    """

    metrics: dict[str, dict[str, float]]
    curves: dict[str, list[float]]
    config: dict[str, Any]
    seconds: dict[str, float]


# --------------------------------------------------------------------------------------- helpers


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


def _output_size(model: PreTrainedModel) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _fingerprint(name: str) -> str:
    """Identity of a model/data reference: a local path's files (names, sizes, mtimes), else the id."""
    path = Path(name)
    if not path.exists():
        return name  # a hub id
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def _code_digest() -> str:
    """Hash of this package's source: cached baselines and teacher metrics from older training or
    evaluation code are never reused."""
    sources = sorted(Path(__file__).parent.glob("*.py"))
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]


def _digest(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_cache(path: Path, payload: Mapping[str, Any]) -> None:
    # Write then rename: a reader never sees a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(json.dumps(payload, indent=2))
    os.replace(staging, path)


def _cpu_threads(processes: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // processes)


def evaluate(
    model: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    vocab_size: int | None = None,
    distances_to_teacher: bool = True,
) -> dict[str, float]:
    """Greedy-decode ``examples`` and score them; KL to ``teacher`` on the reference responses
    (left out with ``distances_to_teacher=False``: across vocabularies they are undefined)."""
    predictions = generate_responses(
        model, tokenizer, [e.prompt for e in examples], max_new_tokens=max_new_tokens
    )
    distances = dict.fromkeys(DISTANCE_METRICS, 0.0)
    if not distances_to_teacher:
        distances = {}
    elif model is not teacher:
        measured = token_distances_to_teacher(
            model,
            teacher,
            tokenizer,
            examples,
            vocab_size=vocab_size,
            measures=tuple(DISTANCE_METRICS.values()),
        )
        distances = {name: measured[measure] for name, measure in DISTANCE_METRICS.items()}
    return {
        "exact_match": exact_match(predictions, examples),
        **distances,
        "rouge_l": mean_rouge_l(predictions, examples),
    }


def _offline_topk_step(
    recipe: Recipe,
    config: RunConfig,
    teacher: PreTrainedModel,
    teacher_id: str,
    data_id: str,
    responses: Sequence[str],
    loader: Callable[..., torch.utils.data.DataLoader],
    vocab_size: int | None,
    source: OnlineSource | None,
) -> tuple[StepLoss, dict[str, Any]]:
    """Precompute (or reuse) the teacher's top-k file for these training sequences; return the
    step that trains from it and what to record in the run config."""
    from reference_impls.teachers.topk import load_topk, precompute_topk, topk_divergence, topk_kwargs

    objective = recipe.objective
    name = getattr(getattr(objective, "divergence", None), "__name__", None)
    if recipe.step_loss is not None or source is not None or name not in ("forward_kl", "reverse_kl"):
        raise ValueError(
            f"--teacher-topk trains a token-level forward or reverse KL on fixed sequences; "
            f"'{recipe.method_id}' is not one (use e.g. forward-kl or reverse-kl, without --source student/mixed)"
        )
    temperature = float(objective.hyperparameters.get("temperature", 1.0))
    fingerprint = _digest(
        {"teacher": teacher_id, "data": data_id, "responses": list(responses), "code": _code_digest()}
    )
    path = (
        cache_root() / "teacher-topk" / f"{fingerprint}-k{config.teacher_topk}-t{temperature:g}.safetensors"
    )
    ordered = loader(responses)
    ordered_batches = torch.utils.data.DataLoader(  # same rows, in index order, for the one-off pass
        ordered.dataset, batch_size=config.batch_size, shuffle=False, collate_fn=ordered.collate_fn
    )
    if not path.is_file():
        precompute_topk(
            teacher,
            ordered_batches,
            k=config.teacher_topk,
            temperature=temperature,
            path=path,
            fingerprint=fingerprint,
            vocab_size=vocab_size,
            progress=config.progress,
        )
    signals = load_topk(
        path,
        fingerprint=fingerprint,
        num_examples=len(responses),
        temperature=temperature,
        k=config.teacher_topk,
    )
    divergence = name

    def step(model: torch.nn.Module, _teacher: object, batch: dict[str, Tensor], cut: int | None) -> Tensor:
        student_logits, labels = aligned_logits(model, batch, vocab_size=cut)
        targets = signals.lookup(batch["example_index"], labels)
        return topk_divergence(
            student_logits,
            labels=labels,
            divergence=divergence,
            temperature=temperature,
            **topk_kwargs(targets),
        )

    return step, {"offline_topk": config.teacher_topk, "tail": "residual", "file": str(path)}


# ------------------------------------------------------------------------------------- the run


def run_recipe(
    recipe: Recipe, config: RunConfig, *, teacher_recipe: TeacherRecipe = TeacherRecipe()
) -> RunResult:
    """Train and evaluate baseline and distilled students against the teacher.

    Args:
        recipe: The method's objective and data source.
        config: Models, data, budget and device.
        teacher_recipe: How the embedded teacher is trained (tests pass a few-step recipe).

    Returns:
        Metrics for ``teacher``, ``baseline`` and ``distilled`` (on the main process; other
        processes of a distributed launch return after training with empty metrics).

    Raises:
        ValueError: If teacher and student vocabularies differ, or the data file is malformed.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    if config.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {config.device!r}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no GPU is available — use --device cpu")
    accelerator = Accelerator(cpu=config.device == "cpu")
    device = accelerator.device
    if device.type == "cpu":
        torch.set_num_threads(_cpu_threads(accelerator.num_processes))
    steps = config.steps if config.steps is not None else DEFAULT_STEPS
    sft_steps = config.sft_steps if config.sft_steps is not None else DEFAULT_SFT_STEPS
    remote = {"trust_remote_code": config.trust_remote_code}

    # 1. The teacher. Under `accelerate launch` the main process trains the embedded teacher
    # alone while the others wait, then they load it from the cache.
    tick = time.perf_counter()
    with accelerator.main_process_first():
        if config.teacher is None:
            teacher, tokenizer = load_or_train_teacher(device, config.progress, recipe=teacher_recipe)
            teacher_id = f"embedded:{teacher_key(teacher_recipe)}"
        else:
            tokenizer = AutoTokenizer.from_pretrained(config.teacher, **remote)
            teacher = AutoModelForCausalLM.from_pretrained(config.teacher, **remote).to(device).eval()
            teacher_id = f"{config.teacher}@{_fingerprint(config.teacher)}"
    seconds["teacher_load"] = time.perf_counter() - tick

    # 2. The student factory: the same initial weights for baseline and distilled.
    if config.student is None and recipe.build_student is not None:
        student_tokenizer = tokenizer
        factory = recipe.build_student
        student_id = f"built:{_digest({'teacher': teacher_id, **factory.describe()})}"
        built: list[PreTrainedModel] = []

        def new_student() -> PreTrainedModel:
            if not built:  # `train` is defined below, before the first call
                built.append(factory(teacher, tokenizer, train, config.seed).to(device))
            return copy.deepcopy(built[0])

    elif config.student is None:
        student_tokenizer = TOKENIZERS[recipe.student_tokenizer]() if recipe.cross_tokenizer else tokenizer
        student_config = build_student_config(student_tokenizer)
        student_id = f"embedded:{_digest(student_config.to_diff_dict())}"

        def new_student() -> PreTrainedModel:
            return build_decoder(student_config, config.seed).to(device)

    else:
        student_tokenizer = AutoTokenizer.from_pretrained(config.student, **remote)
        if not recipe.cross_tokenizer:
            check_same_vocabulary(tokenizer, student_tokenizer)
            student_tokenizer = tokenizer
        student_id = f"{config.student}@{_fingerprint(config.student)}"

        def new_student() -> PreTrainedModel:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                return AutoModelForCausalLM.from_pretrained(config.student, **remote).to(device)

    # 3. The data: the suite, or a JSONL file whose tail is held out.
    if config.data is None:
        train = make_split("train", config.train_size)
        test = make_split("test", config.eval_size)
        # Held out for sources that adapt to a validation loss (DistiLLM): the next examples of
        # the (prefix-stable) training stream, never trained on.
        validation = make_split("train", config.train_size + VALIDATION_SIZE)[config.train_size :]
        data_id = f"suite:{SUITE_VERSION}:{config.train_size}"
    else:
        examples = load_jsonl(config.data)
        if len(examples) < 2:
            raise ValueError(f"{config.data}: need at least 2 examples (training + held-out evaluation)")
        held_out = max(1, min(config.eval_size, len(examples) // 5))
        train, test = examples[:-held_out], examples[-held_out:]
        validation = train[-VALIDATION_SIZE:]  # a JSONL file has no spare examples: reuse a slice
        data_id = f"{config.data}@{_fingerprint(config.data)}"

    start = new_student()
    student_size = count_parameters(start)
    shared_vocabulary = student_tokenizer is tokenizer
    # Shared tokenizer, but heads may be padded differently (e.g. different sizes of one family).
    vocab_size = (
        len(tokenizer) if shared_vocabulary and _output_size(teacher) != _output_size(start) else None
    )

    def loader(
        responses: Sequence[str], examples: Sequence[Example] = train, paired: bool = False
    ) -> torch.utils.data.DataLoader:
        prompts = [e.prompt for e in examples]
        return make_dataloader(
            student_tokenizer,
            prompts,
            responses,
            batch_size=config.batch_size,
            seed=config.seed,
            teacher_tokenizer=tokenizer if paired else None,
        )

    def supervised(model: PreTrainedModel, n_steps: int, description: str) -> list[float]:
        """Plain cross-entropy on the dataset responses: the warm start and the baseline."""
        return train_student(
            model,
            loader([e.response for e in train]),
            cross_entropy_objective,
            n_steps,
            accelerator,
            learning_rate=config.learning_rate,
            vocab_size=vocab_size,
            progress=config.progress,
            description=description,
        )

    # The shared starting point of both students: `sft_steps` of cross-entropy on the responses.
    tick = time.perf_counter()
    if sft_steps:
        supervised(start, sft_steps, "Warm start (supervised fine-tuning, shared)")
        start = accelerator.unwrap_model(start)
    seconds["warm_start"] = time.perf_counter() - tick
    distilled = copy.deepcopy(start)  # trained in step 6

    def score(model: PreTrainedModel) -> dict[str, float]:
        return evaluate(
            model,
            teacher,
            student_tokenizer if model is not teacher else tokenizer,
            test,
            max_new_tokens=config.max_new_tokens,
            vocab_size=vocab_size,
            # The teacher's own row (cached for every student) always has its zero distances.
            distances_to_teacher=shared_vocabulary or model is teacher,
        )

    common_key = {
        "suite": SUITE_VERSION,
        "metrics": METRIC_NAMES,  # a new metric must not be read from an older cache entry
        "code": _code_digest(),
        "teacher": teacher_id,
        "data": data_id,
        "eval_size": len(test),
        "max_new_tokens": config.max_new_tokens,
        "device": device.type,
    }
    runs = cache_root() / "runs"
    metrics: dict[str, dict[str, float]] = {}
    curves: dict[str, list[float]] = {}

    # 4. Teacher metrics (cached: they depend only on the teacher and the evaluation data).
    tick = time.perf_counter()
    if accelerator.is_main_process:
        teacher_cache = runs / f"teacher-{_digest(common_key)}.json"
        cached = _read_cache(teacher_cache)
        metrics["teacher"] = cached["metrics"] if cached else score(teacher)
        if not cached:
            _write_cache(teacher_cache, {"key": common_key, "metrics": metrics["teacher"]})
    seconds["teacher_eval"] = time.perf_counter() - tick

    # 5. Baseline: hard-label cross-entropy on the dataset responses (cached: method-independent).
    tick = time.perf_counter()
    baseline_key = {
        **common_key,
        "student": student_id,
        "steps": steps,
        "sft_steps": sft_steps,
        "seed": config.seed,
        "learning_rate": config.learning_rate,
        "batch_size": config.batch_size,
        "processes": accelerator.num_processes,
    }
    baseline_cache = runs / f"baseline-{_digest(baseline_key)}.json"
    accelerator.wait_for_everyone()  # every process must take the same branch below
    cached = _read_cache(baseline_cache)
    if cached:
        metrics["baseline"], curves["baseline"] = cached["metrics"], cached["curve"]
    else:
        baseline = copy.deepcopy(start)
        curves["baseline"] = supervised(baseline, steps, "Baseline student (cross-entropy, no teacher)")
        if accelerator.is_main_process:
            metrics["baseline"] = score(accelerator.unwrap_model(baseline))
            _write_cache(
                baseline_cache,
                {"key": baseline_key, "metrics": metrics["baseline"], "curve": curves["baseline"]},
            )
        del baseline
    seconds["baseline"] = time.perf_counter() - tick

    # 6. Distilled: the recipe's objective on the recipe's data source, same init and budget.
    tick = time.perf_counter()
    context = SourceContext(teacher=teacher, tokenizer=tokenizer, max_new_tokens=config.max_new_tokens)
    responses = recipe.data_source.responses(train, context)
    seconds["data_source"] = time.perf_counter() - tick
    tick = time.perf_counter()
    source = recipe.data_source if isinstance(recipe.data_source, OnlineSource) else None
    sampler = None
    if source is not None:
        sampler = ModelSampler(
            student=distilled,
            teacher=teacher,
            eos_id=student_tokenizer.eos_token_id,
            pad_id=pad_id(student_tokenizer),
            max_new_tokens=config.max_new_tokens,
            temperature=source.temperature,
            teacher_mix=getattr(source, "teacher_mix", 0.0),
            seed=config.seed,
            vocab_size=vocab_size,
        )
    step_loss = recipe.step_loss
    teacher_signals: dict[str, Any] = {}
    if config.teacher_topk is not None:
        step_loss, teacher_signals = _offline_topk_step(
            recipe, config, teacher, teacher_id, data_id, responses, loader, vocab_size, source
        )
    if recipe.step_loss is not None and hasattr(recipe.step_loss, "prepare"):
        # E.g. DSKD's projectors, trained with the student: initialised from the run's seed, not
        # from whatever the global RNG holds after the earlier steps of this process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            recipe.step_loss.prepare(distilled, teacher)
    curves["distilled"] = train_student(
        distilled,
        loader(responses, paired=recipe.cross_tokenizer),
        recipe.objective,
        steps,
        accelerator,
        teacher=teacher if recipe.uses_teacher_logits and config.teacher_topk is None else None,
        learning_rate=config.learning_rate,
        vocab_size=vocab_size,
        source=source,
        sampler=sampler,
        validation_batches=loader([e.response for e in validation], validation) if source else None,
        step_loss=step_loss,
        progress=config.progress,
        description=f"Distilled student ({recipe.method_id})",
    )
    seconds["distill"] = time.perf_counter() - tick
    tick = time.perf_counter()
    if accelerator.is_main_process:
        metrics["distilled"] = score(accelerator.unwrap_model(distilled))
    seconds["distilled_eval"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started

    resolved = {
        "method_id": recipe.method_id,
        "hyperparameters": dict(recipe.hyperparameters),
        "data_source": {
            **recipe.data_source.describe(),
            **({"origins": dict(getattr(source, "origins", {}))} if source is not None else {}),
        },
        "uses_teacher_logits": recipe.uses_teacher_logits,
        **({"teacher_signals": teacher_signals} if teacher_signals else {}),
        "run": {**asdict(config), "steps": steps, "sft_steps": sft_steps},
        "suite_version": SUITE_VERSION,
        "teacher": {"id": teacher_id, "parameters": count_parameters(teacher)},
        "student": {"id": student_id, "parameters": student_size},
        "data": {"id": data_id, "train_examples": len(train), "eval_examples": len(test)},
        "device": str(device),
        "processes": accelerator.num_processes,
        "baseline_cached": bool(cached),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    # Only the main process evaluates; the others report their training curves.
    main_metrics = metrics if accelerator.is_main_process else {}
    return RunResult(metrics=main_metrics, curves=curves, config=resolved, seconds=seconds)
