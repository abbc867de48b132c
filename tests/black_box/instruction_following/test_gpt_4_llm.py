"""GPT-4-LLM: Alpaca's instructions shared through the response cache, re-answered by the teacher,
and the judged comparison data (exact counts with an oracle judge and injected mistakes)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from kdatlas.runner import RunError, build_recipe
from reference_impls.black_box.instruction_following.alpaca import alpaca_recipe
from reference_impls.black_box.instruction_following.gpt_4_llm import (
    COMPARISONS,
    collect_comparisons,
    gpt_4_llm_recipe,
)
from reference_impls.tasks import instructions as suite
from tests.support.fakes import OracleTeacher, make_context

SHARED = ("num_instructions", "prompt_instructions", "temperature", "top_p", "novelty_threshold")


def _defaults(function: object) -> dict:
    return {n: p.default for n, p in inspect.signature(function).parameters.items()}


def test_generation_defaults_are_alpacas() -> None:
    """Equal settings are what makes the generation requests, and so the cache entries, shared."""
    alpaca, gpt4 = _defaults(alpaca_recipe), _defaults(gpt_4_llm_recipe)
    assert {n: gpt4[n] for n in SHARED} == {n: alpaca[n] for n in SHARED}


def test_alpacas_instructions_come_from_the_cache(tmp_path: Path) -> None:
    first = OracleTeacher()
    alpaca = alpaca_recipe(num_instructions=12).data.build(make_context(tmp_path, first))
    second = OracleTeacher()
    context = make_context(tmp_path, second)  # same cache file, fresh stats
    data = gpt_4_llm_recipe(num_instructions=12).data.build(context)
    # No instruction is generated again ...
    assert not any(p.startswith("new") for p in second.prompts)
    assert context.stats["alpaca: kept"] == 12
    assert [e.segments[0][0] for e in data.examples] == [e.segments[0][0] for e in alpaca.examples]
    # ... the greedy answers are Alpaca's cached ones; only the sampled second answers are new
    # (the oracle's are identical to the first, so nothing is judged).
    assert second.calls == 12
    assert context.stats[f"{COMPARISONS}: skipped (identical answers)"] == 12
    assert data.examples == alpaca.examples


def test_a_sampled_answer_teacher_makes_new_answer_requests(tmp_path: Path) -> None:
    alpaca_recipe(num_instructions=10).data.build(make_context(tmp_path, OracleTeacher()))
    second = OracleTeacher()
    gpt_4_llm_recipe(num_instructions=10, answer_temperature=1.0, comparison_data=False).data.build(
        make_context(tmp_path, second)
    )
    assert second.calls == 10 and not any(p.startswith("new") for p in second.prompts)


def test_comparisons_rank_with_the_judge_and_count_every_skip(tmp_path: Path) -> None:
    instructions = suite.make_instructions("train", 10)
    right = {e.prompt: e.response for e in instructions}
    wrong = {e.prompt: e.response + "x" for e in instructions}
    first = {**right, instructions[0].prompt: wrong[instructions[0].prompt]}  # wrong first answer
    second = {**wrong, instructions[0].prompt: right[instructions[0].prompt]}
    second[instructions[1].prompt] = right[instructions[1].prompt]  # identical answers
    del second[instructions[2].prompt]  # one answer was dropped
    first[instructions[3].prompt] = instructions[3].response + "y"  # both wrong: tied verdicts
    # The judge errs on instruction 4 (says yes to the wrong answer: a tie) and writes garbage for 5.
    judged = {
        suite.judge_prompt(instructions[4].prompt, wrong[instructions[4].prompt]): suite.JUDGE_YES,
        suite.judge_prompt(instructions[5].prompt, right[instructions[5].prompt]): "maybe",
    }
    teacher = OracleTeacher(mistakes=lambda prompt, text: judged.get(prompt, text))
    context = make_context(tmp_path, teacher)
    pairs = collect_comparisons(context, instructions, first, second)
    stats = context.stats
    assert stats[f"{COMPARISONS}: skipped (identical answers)"] == 1
    assert stats[f"{COMPARISONS}: skipped (an answer was dropped)"] == 1
    assert stats[f"{COMPARISONS}: skipped (tied verdicts)"] == 2  # instructions 3 and 4
    assert stats[f"{COMPARISONS}: skipped (malformed verdict)"] == 1
    assert teacher.calls == 2 * 8  # both answers of the 8 differing pairs were judged
    # Instruction 0: the second (right) answer is chosen; 6-9: the first.
    assert pairs[0] == (instructions[0].prompt, right[instructions[0].prompt], wrong[instructions[0].prompt])
    assert [p[0] for p in pairs] == [instructions[i].prompt for i in (0, 6, 7, 8, 9)]
    assert stats[f"{COMPARISONS}: pairs"] == 5
    assert stats[f"{COMPARISONS}: right answer chosen over a wrong one"] == 1.0
    assert stats[f"{COMPARISONS}: wrong answer chosen over a right one"] == 0.0


def test_a_judge_that_prefers_wrong_answers_is_reported(tmp_path: Path) -> None:
    instructions = suite.make_instructions("train", 6)
    right = {e.prompt: e.response for e in instructions}
    wrong = {e.prompt: e.response + "x" for e in instructions}
    flipped = {suite.JUDGE_YES: suite.JUDGE_NO, suite.JUDGE_NO: suite.JUDGE_YES}
    teacher = OracleTeacher(mistakes=lambda prompt, text: flipped.get(text, text))
    context = make_context(tmp_path, teacher)
    pairs = collect_comparisons(context, instructions, right, wrong)
    assert all(chosen == wrong[prompt] for prompt, chosen, _ in pairs) and len(pairs) == 6
    assert context.stats[f"{COMPARISONS}: wrong answer chosen over a right one"] == 1.0


def test_bad_answers_are_dropped_before_training(tmp_path: Path) -> None:
    def mistakes(prompt: str, text: str) -> str:
        parsed = suite.parse_instruction(prompt)
        return "" if parsed is not None and "up" in parsed.task.split(" ") else text

    context = make_context(tmp_path, OracleTeacher(mistakes=mistakes))
    data = gpt_4_llm_recipe(num_instructions=20).data.build(context)
    stats = context.stats
    dropped = stats["gpt-4-llm answers: dropped (empty)"]
    assert 0 < dropped < 20 and len(data.examples) == 20 - dropped
    assert stats["gpt-4-llm weaker answers: dropped (empty)"] == dropped
    assert stats[f"{COMPARISONS}: skipped (an answer was dropped)"] == dropped


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"num_instructions": 0}, "num_instructions"),
        ({"answer_temperature": -0.5}, "answer_temperature"),
        ({"comparison_temperature": -1.0}, "comparison_temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"novelty_threshold": -0.1}, "novelty_threshold"),
    ],
)
def test_bad_hyperparameters_name_the_parameter(override: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        gpt_4_llm_recipe(**override)
    with pytest.raises(RunError, match=name):
        build_recipe("gpt-4-llm", {k: str(v) for k, v in override.items()})
