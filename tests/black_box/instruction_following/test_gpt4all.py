"""GPT4All: prompts from three sources answered by the teacher, curation step by step (failed and
malformed responses, then the low-diversity source), exact counts, correctness never checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdatlas.runner import RunError, build_recipe
from reference_impls.black_box.instruction_following.gpt4all import (
    SOURCES,
    collect_prompts,
    gpt4all_recipe,
    output_diversity,
    output_problem,
)
from reference_impls.tasks import instructions as suite
from reference_impls.teachers.text import Completion
from tests.support.fakes import OracleTeacher, make_context

SIZES = {"single": 30, "conversation": 20, "templated": 40}


def _recipe(**overrides: float) -> object:
    return gpt4all_recipe(
        single_prompts=SIZES["single"],
        conversation_prompts=SIZES["conversation"],
        templated_prompts=SIZES["templated"],
        **overrides,
    )


def test_output_problems_and_diversity() -> None:
    assert output_problem(Completion("CBA", "stop")) is None
    assert output_problem(Completion("42", "stop")) is None
    assert output_problem(Completion(" ", "stop")) == "empty"
    assert output_problem(Completion("cb", "length")) == "truncated"
    assert output_problem(Completion("?!", "stop")) == "no content"
    assert output_problem(Completion("rev: abc =", "stop")) == "malformed"  # an echoed prompt
    assert output_problem(Completion("a b", "stop")) == "malformed"
    assert output_diversity(["a", "a", "b", "c"]) == 0.75 and output_diversity([]) == 0.0


def test_sources_are_disjoint_from_the_test_split_and_shaped_as_stated() -> None:
    single = collect_prompts("single", 30)
    conversation = collect_prompts("conversation", 20)
    templated = collect_prompts("templated", 40)
    assert {suite.depth_of(e) for e in single} == {1, 2, 3}
    assert all(suite.TURN_SEPARATOR in e.prompt for e in conversation)  # earlier turns included
    assert {e.task for e in templated} == {"count", "vowel"}
    assert all(len(e.response) == 1 for e in templated)  # one-character answers, as P3's one word
    for example in single + templated:
        assert not suite.in_test_bucket(example.prompt)
    with pytest.raises(ValueError, match="source"):
        collect_prompts("p4", 3)


def test_curation_drops_the_low_diversity_source_exactly(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    data = _recipe().data.build(context)
    stats = context.stats
    templated = collect_prompts("templated", SIZES["templated"])
    expected = len({e.response for e in templated}) / len(templated)  # the oracle's answers
    assert expected < 0.5
    assert stats["gpt4all templated: output diversity"] == round(expected, 4)
    assert stats["gpt4all templated: dropped (low-diversity source)"] == SIZES["templated"]
    assert stats["gpt4all templated: kept"] == 0
    for source in ("single", "conversation"):
        assert stats[f"gpt4all {source}: output diversity"] >= 0.5
        assert stats[f"gpt4all {source}: kept"] == stats[f"gpt4all {source}: collected"] == SIZES[source]
    prompts = [e.segments[0][0] for e in data.examples]
    expected_prompts = [e.prompt for s in ("single", "conversation") for e in collect_prompts(s, SIZES[s])]
    assert prompts == expected_prompts


def test_without_the_diversity_rule_every_source_is_kept(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    data = _recipe(min_source_diversity=0.0).data.build(context)
    assert len(data.examples) == sum(SIZES.values())
    assert "gpt4all templated: dropped (low-diversity source)" not in context.stats


def test_failed_and_malformed_responses_are_counted_and_dropped(tmp_path: Path) -> None:
    single = collect_prompts("single", SIZES["single"])
    conversation = collect_prompts("conversation", SIZES["conversation"])
    empty = {e.prompt for e in single if suite.depth_of(e) == 3}
    cut_off = {e.prompt for e in single if suite.depth_of(e) == 2}
    malformed = {e.prompt for e in conversation[::4]}
    wrong = {e.prompt for e in conversation[1::4]}

    def mistakes(prompt: str, text: str) -> str:
        if prompt in empty:
            return ""
        if prompt in malformed:
            return f"{text} ="
        return text[::-1] + "x" if prompt in wrong else text  # wrong but well-formed

    teacher = OracleTeacher(
        mistakes=mistakes, finish_reason=lambda prompt, text: "length" if prompt in cut_off else "stop"
    )
    context = make_context(tmp_path, teacher)
    data = _recipe().data.build(context)
    stats = context.stats
    assert stats["gpt4all single: dropped (empty)"] == len(empty) == 10
    assert stats["gpt4all single: dropped (truncated)"] == len(cut_off) == 10
    assert stats["gpt4all conversation: dropped (malformed)"] == len(malformed) == 5
    assert stats["gpt4all single: kept"] == 10 and stats["gpt4all conversation: kept"] == 15
    # Curation never checks correctness: the wrong answers are kept, and reported.
    assert stats["gpt4all conversation: teacher answers correct"] == round(10 / 15, 4)
    assert len(data.examples) == 25 and teacher.calls == sum(SIZES.values())


def test_rerun_is_served_from_the_cache(tmp_path: Path) -> None:
    first = _recipe().data.build(make_context(tmp_path))
    again = OracleTeacher()
    assert _recipe().data.build(make_context(tmp_path, again)).examples == first.examples
    assert again.calls == 0


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"single_prompts": -1}, "single_prompts"),
        ({"templated_prompts": -5}, "templated_prompts"),
        ({"min_source_diversity": 1.5}, "min_source_diversity"),
    ],
)
def test_bad_hyperparameters_name_the_parameter(override: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        gpt4all_recipe(**override)
    with pytest.raises(RunError, match=name):
        build_recipe("gpt4all", {k: str(v) for k, v in override.items()})
    with pytest.raises(ValueError, match="at least one"):
        gpt4all_recipe(**{f"{source}_prompts": 0 for source in SOURCES})
