"""LaMini-LM: the pool of existing, example-guided and topic-guided instructions, one shared
ROUGE-L pool, every instruction answered by the teacher, bad teacher output counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdatlas.runner import RunError, build_recipe
from reference_impls.black_box.filters import NoveltyFilter
from reference_impls.black_box.instruction_following.lamini_lm import (
    EXAMPLE_GUIDED,
    TOPIC_GUIDED,
    lamini_lm_recipe,
)
from reference_impls.tasks import instructions as suite
from tests.support.fakes import OracleTeacher, make_context


def _requests(teacher: OracleTeacher) -> tuple[list[str], list[str], list[str]]:
    """The teacher's prompts split into example-guided, topic-guided and answer requests."""
    example = [p for p in teacher.prompts if p.startswith("new:")]
    topic = [p for p in teacher.prompts if p.startswith("new [")]
    answers = [p for p in teacher.prompts if not p.startswith("new")]
    return example, topic, answers


def test_pool_is_existing_plus_both_routes_all_answered_by_the_teacher(tmp_path: Path) -> None:
    teacher = OracleTeacher()
    context = make_context(tmp_path, teacher)
    data = lamini_lm_recipe(num_instructions=30, topic_share=0.4).data.build(context)
    stats = context.stats
    assert stats[f"{EXAMPLE_GUIDED}: kept"] == 18 and stats[f"{TOPIC_GUIDED}: kept"] == 12
    # The seeds (existing instructions) come first and are answered by the teacher too.
    prompts = [e.segments[0][0] for e in data.examples]
    assert len(prompts) == 24 + 30 == stats["lamini-lm answers: answers kept"]
    assert prompts[:24] == [s.prompt for s in context.seeds]
    for example in data.examples:  # the oracle's exact answers, unfiltered
        assert example.segments[1][0] == suite.parse_instruction(example.segments[0][0]).response
    # Example-guided requests show 3 seed tasks and no topic; topic-guided ones name a suite kind.
    example, topic, answers = _requests(teacher)
    # Requests go out a round (256) at a time; the kept target is reached within the first one.
    assert len(example) == len(topic) == 256
    seeds = {s.prompt for s in context.seeds}
    for prompt in example:
        demos = prompt[len("new: ") : -len(" >")].split(" | ")
        assert len(demos) == 3 and set(demos) <= seeds
    assert {p[len("new [") : p.index("]")] for p in topic} <= set(suite.KINDS)
    assert len(answers) == 54


def test_one_rouge_pool_across_existing_and_both_routes(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    data = lamini_lm_recipe(num_instructions=40).data.build(context)
    pool = NoveltyFilter(threshold=0.7)
    for example in data.examples:  # in pool order: every one novel against all before it
        assert pool.max_similarity(example.segments[0][0]) <= 0.7
        pool.admit(example.segments[0][0])
    assert len(pool) == 24 + 40


def test_diversity_is_reported_per_route(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    data = lamini_lm_recipe(num_instructions=20).data.build(context)
    parsed = [suite.parse_instruction(e.segments[0][0]) for e in data.examples]
    stats = context.stats
    assert stats["lamini-lm existing: distinct tasks"] == len(suite.KINDS)  # 24 seeds, every kind
    assert stats["lamini-lm pool: distinct tasks"] == len({e.task for e in parsed})
    for depth in (1, 2, 3):
        assert stats[f"lamini-lm pool: depth {depth}"] == sum(suite.depth_of(e) == depth for e in parsed)
        assert stats[f"lamini-lm pool: depth {depth}"] == sum(
            stats[f"{tag}: depth {depth}"] for tag in ("lamini-lm existing", EXAMPLE_GUIDED, TOPIC_GUIDED)
        )


@pytest.mark.parametrize(
    ("share", "example_requests", "topic_requests"), [(0.0, True, False), (1.0, False, True)]
)
def test_one_route_only(tmp_path: Path, share: float, example_requests: bool, topic_requests: bool) -> None:
    teacher = OracleTeacher()
    context = make_context(tmp_path, teacher)
    lamini_lm_recipe(num_instructions=10, topic_share=share).data.build(context)
    example, topic, _ = _requests(teacher)
    assert bool(example) == example_requests and bool(topic) == topic_requests


def test_bad_generations_and_answers_are_counted_and_dropped(tmp_path: Path) -> None:
    # Topic "sort" requests get malformed text; answers to depth-2 instructions come back empty.
    def mistakes(prompt: str, text: str) -> str:
        if prompt.startswith("new [sort]"):
            return "sort sort: ab ="
        parsed = suite.parse_instruction(prompt)
        return "" if parsed is not None and suite.depth_of(parsed) == 2 else text

    teacher = OracleTeacher(mistakes=mistakes)
    context = make_context(tmp_path, teacher)
    data = lamini_lm_recipe(num_instructions=30).data.build(context)
    stats = context.stats
    # The last round stops at the target: the first `generated` topic requests were read.
    topic = _requests(teacher)[1][: stats[f"{TOPIC_GUIDED}: generated"]]
    assert stats[f"{TOPIC_GUIDED}: dropped (malformed instruction)"] == sum(
        p.startswith("new [sort]") for p in topic
    )
    depth_two = stats["lamini-lm pool: depth 2"]
    assert depth_two > 0 and stats["lamini-lm answers: dropped (empty)"] == depth_two
    assert len(data.examples) == 24 + 30 - depth_two
    assert stats["lamini-lm answers: teacher answers correct"] == 1.0


def test_rerun_is_served_from_the_cache(tmp_path: Path) -> None:
    recipe = lamini_lm_recipe(num_instructions=16)
    first = recipe.data.build(make_context(tmp_path))
    again = OracleTeacher()
    assert recipe.data.build(make_context(tmp_path, again)).examples == first.examples
    assert again.calls == 0


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"num_instructions": 0}, "num_instructions"),
        ({"topic_share": 1.5}, "topic_share"),
        ({"prompt_examples": 0}, "prompt_examples"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"novelty_threshold": 2.0}, "novelty_threshold"),
    ],
)
def test_bad_hyperparameters_name_the_parameter(override: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        lamini_lm_recipe(**override)
    with pytest.raises(RunError, match=name):  # the same through `kdatlas run --set`
        build_recipe("lamini-lm", {k: str(v) for k, v in override.items()})
