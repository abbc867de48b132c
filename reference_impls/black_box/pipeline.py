"""What a black-box method is made of: a data pipeline over the teacher's text, and its evaluation.

A black-box method's recipe has a `TextPipeline` as its data part: its *data pipeline* (how it
asks the teacher for text and filters what comes back), and one of the ``EVALUATIONS`` below.
`reference_impls.run.run_recipe` runs it like every other recipe, so the numbers are comparable.

The pipeline gets a `PipelineContext`: ``ask`` (cached teacher calls), the seed tasks, a student
factory, fine-tuning and greedy student answers (for methods that put the student in the loop:
Lion, Personalized Distillation, selective reflection-tuning), and a ``stats`` dict for its
filter counts, which are reported with the metrics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.checkpoints import RunCheckpoints
from reference_impls.core.generation import generate_responses
from reference_impls.core.metrics import exact_match, mean_rouge_l, sequence_log_probs
from reference_impls.core.recipe import RunConfig, TeacherAccess
from reference_impls.core.sft import TrainingExample, fine_tune
from reference_impls.core.training import Loss, cross_entropy_objective
from reference_impls.tasks import instructions as suite
from reference_impls.tasks.strings import Example, extract_answer
from reference_impls.teachers.access import cached_generate
from reference_impls.teachers.messages import ChatMessage, Completion, GenerationRequest
from reference_impls.teachers.text import TextTeacher

# Seed data in another format than the instruction seed tasks is drawn from its own stream.
SEED_DATA_OFFSET = 1000
NLL_BATCH_SIZE = 64
MAX_NEW_TOKENS = 40  # long enough for an explained depth-3 answer or an annotation


@dataclass
class DistilledData:
    """What a pipeline produces: training examples, its filter counts, and optionally a student
    it already trained (loops such as Lion train inside the pipeline)."""

    examples: list[TrainingExample]
    student: PreTrainedModel | None = None


@dataclass(frozen=True)
class TextPipeline:
    """The ``data`` part of every black-box recipe: the paper's data pipeline over teacher text.

    ``build(context) -> DistilledData`` asks the teacher through ``context.ask`` only (text in,
    text out, cached), filters what comes back and returns the training examples; the run trains
    the distilled student on them with the recipe's loss (cross-entropy on their supervised
    segments), unless the pipeline trained a student itself.
    """

    build: Callable[[PipelineContext], DistilledData]
    teacher_access: TeacherAccess = "text"

    def describe(self) -> dict[str, str]:
        """The pipeline function's name (its counts are recorded separately)."""
        return {"name": "text-pipeline", "function": getattr(self.build, "__qualname__", "build")}


@dataclass
class PipelineContext:
    """What a pipeline may use. The teacher is reachable only through `ask` (text in, text out).

    ``steps`` is the run's training budget (baseline and distilled student), for pipelines that
    train a student themselves (Lion, Personalized Distillation).
    """

    teacher: TextTeacher
    cache_path: Path
    seeds: list[Example]
    tokenizer: PreTrainedTokenizerBase  # the student's
    config: RunConfig
    steps: int
    device: torch.device
    new_student: Callable[[], PreTrainedModel]
    checkpoints: RunCheckpoints | None = None
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
        self,
        model: PreTrainedModel,
        examples: Sequence[TrainingExample],
        steps: int,
        description: str,
        loss: Loss = cross_entropy_objective,
        accelerator: Accelerator | None = None,
    ) -> list[float]:
        """Train ``model`` in place on ``examples`` (cross-entropy on their supervised segments, or
        the recipe's ``loss``). A pipeline's own training runs in its process (``accelerator=None``);
        the run trains the baseline and the distilled student with its accelerator."""
        return fine_tune(
            model,
            self.tokenizer,
            examples,
            loss=loss,
            steps=steps,
            batch_size=self.config.batch_size,
            learning_rate=self.config.learning_rate,
            seed=self.config.seed,
            progress=self.config.progress,
            description=description,
            accelerator=accelerator,
            gradient_accumulation=self.config.gradient_accumulation,
            checkpoints=self.checkpoints,
        )

    def student_answers(self, model: PreTrainedModel, prompts: Sequence[str]) -> list[str]:
        """The student's greedy answers (cut at the end of a turn)."""
        return student_answers(model, self.tokenizer, prompts)

    def response_nll(self, model: PreTrainedModel, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Mean token negative log-likelihood of each response given its prompt (``""`` for none),
        EOS excluded: ``log PPL(response | prompt)``."""
        log_probs = sequence_log_probs(
            model, self.tokenizer, pairs, batch_size=NLL_BATCH_SIZE, with_eos=False, per_token=True
        )
        return [-value for value in log_probs]


def student_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]
) -> list[str]:
    """Greedy answers, cut at the first turn separator (a conversation's end of turn)."""
    outputs = generate_responses(model, tokenizer, list(prompts), max_new_tokens=MAX_NEW_TOKENS)
    return [first_turn(o) for o in outputs]


def first_turn(output: str) -> str:
    """An output up to the first turn separator (a model may go on with a turn of its own)."""
    return output.split(suite.TURN_SEPARATOR)[0]


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
    so that the baseline is not scored on a format it never saw. ``golden``: the evaluated
    response is the bare answer, so the suite's oracle distribution over answers is the right
    reference for the model's response distribution (not under the 'explain' system prompt,
    where a rationale comes first). ``ood``: the same task on inputs longer than training has
    (the survey's out-of-distribution robustness), where the suite has such a split.
    """

    examples: Callable[[int], list[Example]]
    read: Callable[[str], str] = lambda text: text
    by_group: Callable[[Example], str] | None = None
    description: str = ""
    baseline_data: Callable[[Sequence[Example], int, int], list[TrainingExample]] = (
        lambda seeds, n, seed: _pairs(seeds)
    )
    golden: bool = True
    ood: Callable[[int], list[Example]] | None = None


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
        golden=system != suite.EXPLAIN,
        ood=lambda n: [_under(system, e) for e in suite.make_instructions("ood", n)],
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
        ood=lambda n: suite.make_instructions("ood", n),
    ),
    "conversations": Evaluation(
        lambda n: [suite.last_turn_example(c) for c in suite.make_conversations("test", n)],
        by_group=lambda e: f"{e.label} turns",
        description="the last turn of held-out 2-3 turn conversations",
        baseline_data=_conversation_seed_data,
        ood=lambda n: [suite.last_turn_example(c) for c in suite.make_conversations("ood", n)],
    ),
    "find": Evaluation(
        lambda n: suite.make_find_queries("test", n),
        by_group=lambda e: "negative queries" if e.response == suite.NO_ENTITY else "positive queries",
        description="typed entity queries over held-out passages, about half negative",
        baseline_data=_find_seed_data,
        ood=lambda n: suite.make_find_queries("ood", n),
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
