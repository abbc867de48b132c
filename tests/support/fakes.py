"""Test doubles for the black-box pipelines: an exact *oracle* teacher and a context builder.

The oracle answers every prompt format of the instruction suite exactly (a sampled ``new``
request draws from its seed), so pipeline tests can check filters and loops against known
answers without a trained model. ``mistakes`` injects bad teacher output for chosen prompts.
The method runs themselves always use a real model as the teacher; this is for unit tests only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from reference_impls.black_box.pipeline import PipelineContext
from reference_impls.core.models import build_student
from reference_impls.core.recipe import Recipe, RunConfig
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.run import RunResult, run_recipe
from reference_impls.tasks import instructions as suite
from reference_impls.tasks import meta_tasks
from reference_impls.teachers.text import Completion, GenerationRequest, TextTeacher, plain_chat_prompt


def oracle_response(prompt: str, rng: random.Random) -> str:
    """The suite's exact response to ``prompt`` (any meta-task); ``""`` for unknown formats."""
    system, _, body = prompt.rpartition(suite.TURN_SEPARATOR)
    if body.startswith("new"):
        head, _, rest = body.partition(": ")
        topic = head[len("new [") : -1] if head.startswith("new [") else None
        seeds = [suite.parse_instruction(s) for s in rest.rstrip(" >").split(" | ")]
        seeds = [s for s in seeds if s is not None]
        return meta_tasks.new_instruction(rng, seeds, topic) if seeds or topic else ""
    for head in ("judge: ", "fix: "):
        if body.startswith(head):
            instruction, _, response = body[len(head) :].rstrip(" ?").partition("=")
            parsed = suite.parse_instruction(instruction + "=")
            if parsed is None:
                return ""
            if head == "fix: ":  # a correct response is repeated, a wrong one corrected
                return response if response in parsed.answers else parsed.response
            return suite.JUDGE_YES if response in parsed.answers else suite.JUDGE_NO
    if body.startswith("deepen: "):
        parsed = suite.parse_instruction(body[len("deepen: ") :])
        return meta_tasks.deepened(rng, parsed) if parsed else ""
    if body.startswith("widen: "):
        parsed = suite.parse_instruction(body[len("widen: ") :])
        return meta_tasks.widened(rng, parsed) if parsed else ""
    if body.startswith("ner: "):
        return suite.format_annotation(suite.entities(body[len("ner: ") :].rstrip(" =")))
    if body.startswith("find "):
        entity_type, _, passage = body[len("find ") :].partition(": ")
        return suite.find_example(entity_type, passage.rstrip(" =")).response
    parsed = suite.parse_instruction(body)
    if parsed is None:
        return ""
    first_line = prompt.split(suite.TURN_SEPARATOR)[0]
    return suite.explained(parsed) if first_line == suite.EXPLAIN and system else parsed.response


class OracleTeacher(TextTeacher):
    """A `TextTeacher` that answers the suite's formats exactly.

    Args:
        mistakes: ``(prompt, exact answer) -> text`` applied to every answer (e.g. return ``""``
            for some prompts to test how a pipeline handles empty output).
        finish_reason: ``(prompt, text) -> finish reason``; ``"stop"`` by default.
    """

    def __init__(
        self,
        mistakes: Callable[[str, str], str] | None = None,
        finish_reason: Callable[[str, str], str] | None = None,
    ) -> None:
        self.mistakes = mistakes
        self.finish_reason = finish_reason
        self.calls = 0
        self.prompts: list[str] = []

    def identity(self) -> str:
        return "oracle:suite"

    def iter_generate(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, list[Completion]]]:
        for i, request in enumerate(requests):
            prompt = (
                request.prompt
                if isinstance(request.prompt, str)
                else plain_chat_prompt([{"role": m.role, "content": m.content} for m in request.prompt])
            )
            self.calls += 1
            self.prompts.append(prompt)
            samples = []
            for k in range(request.n):
                rng = random.Random(f"{prompt}-{request.seed}-{k}")
                text = oracle_response(prompt, rng)
                if self.mistakes is not None:
                    text = self.mistakes(prompt, text)
                reason = self.finish_reason(prompt, text) if self.finish_reason else "stop"
                samples.append(Completion(text, reason, len(prompt) + 1, len(text) + 1, None, k))
            yield i, samples


def make_context(
    tmp_path: Path, teacher: TextTeacher | None = None, *, seed_tasks: int = 24, steps: int = 5
) -> PipelineContext:
    """A pipeline context on the CPU with the embedded student and a fresh response cache."""
    tokenizer = build_tokenizer()
    config = RunConfig(device="cpu", steps=steps, seed_tasks=seed_tasks, progress=False)
    return PipelineContext(
        teacher=teacher or OracleTeacher(),
        cache_path=tmp_path / "responses.jsonl",
        seeds=suite.seed_tasks(seed_tasks),
        tokenizer=tokenizer,
        config=config,
        steps=steps,
        device=torch.device("cpu"),
        new_student=lambda: build_student(tokenizer, 0),
    )


class RecordingOracle(OracleTeacher):
    """The exact teacher, keeping every request it is sent (prompt and sampling settings)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.requests: list[GenerationRequest] = []

    def iter_generate(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, list[Completion]]]:
        self.requests.extend(requests)
        yield from super().iter_generate(requests)


def run_with_oracle(tmp_path: Path, recipe: Recipe, teacher: TextTeacher) -> RunResult:
    """A black-box recipe through the one run: 4 steps, 16 held-out items, a cache in ``tmp_path``."""
    config = RunConfig(device="cpu", steps=4, eval_size=16, cache=str(tmp_path / "cache.jsonl"), progress=False)
    return run_recipe(recipe, config, teacher=teacher)


def check_end_to_end_and_cached_rerun(tmp_path: Path, recipe: Recipe, num_examples: int) -> None:
    """The pipeline end to end against the oracle, then again from the response cache alone."""
    result = run_with_oracle(tmp_path, recipe, OracleTeacher())
    assert set(result.metrics) == {"teacher", "baseline", "distilled"}
    assert result.metrics["teacher"]["exact_match"] == 1.0  # the oracle, scored exactly
    assert {"exact_match (depth 1)", "exact_match (depth 3)", "rouge_l"} <= set(result.metrics["distilled"])
    assert len(result.data) >= num_examples
    assert result.config["pipeline"]["training_examples"] == len(result.data)
    assert len(result.curves["baseline"]) == len(result.curves["distilled"]) == 4
    again = OracleTeacher()
    rerun = run_with_oracle(tmp_path, recipe, again)
    assert again.calls == 0  # everything came from the response cache
    assert rerun.data == result.data
