"""Reflection-Tuning (V1): instruction and response reflection falling back to the original text
on bad teacher output, the recycled Alpaca pool with an exact teacher, and its hyper-parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impls.black_box.instruction_following.reflection_tuning import (
    alpaca_pool,
    correct_rate,
    reflect_instructions,
    reflect_responses,
    reflection_tuning_recipe,
)
from reference_impls.tasks import instructions as suite
from tests.support.fakes import OracleTeacher, make_context


def test_defaults_are_the_released_scripts() -> None:
    recipe = reflection_tuning_recipe()
    assert recipe.method_id == "reflection-tuning" and recipe.evaluation == "instructions"
    assert recipe.hyperparameters == {
        "num_instructions": 600,  # the embedded Alpaca run's size: the pool comes from its cache
        "instruction_operation": "deepen",
        "temperature": 0.0,  # reflect_response.py
    }


def _teacher_saying(bad: dict[str, str], finish: dict[str, str] | None = None) -> OracleTeacher:
    """The exact teacher, except for prompts in ``bad`` (prompt -> text) and ``finish``."""
    finish = finish or {}
    return OracleTeacher(
        mistakes=lambda prompt, text: bad.get(prompt, text),
        finish_reason=lambda prompt, text: finish.get(prompt, "stop"),
    )


def test_instruction_reflection_falls_back_to_the_original_pair(tmp_path: Path) -> None:
    pairs = [
        ("rev: abc =", "cba"),  # deepened correctly
        ("up: abc =", "ABC"),  # deepen output malformed
        ("sort: cab =", "abc"),  # deepen output empty
        ("dedup: aab =", "ab"),  # deepen output truncated
        ("rev: xyz =", "zyx"),  # the deepened instruction's answer is empty
        ("add: 1+2 =", "3"),  # atomic: the teacher repeats it (unchanged)
    ]
    bad = {
        suite.deepen_prompt("rev: abc ="): "rev up: abc =",
        suite.deepen_prompt("up: abc ="): "up blah: abc =",
        suite.deepen_prompt("sort: cab ="): "",
        suite.deepen_prompt("dedup: aab ="): "dedup rev: aab =",
        suite.deepen_prompt("rev: xyz ="): "rev sort: xyz =",
        "rev sort: xyz =": "",
    }
    finish = {suite.deepen_prompt("dedup: aab ="): "length"}
    context = make_context(tmp_path, _teacher_saying(bad, finish))
    reflected = reflect_instructions(context, pairs)
    assert reflected == [("rev up: abc =", "CBA"), *pairs[1:]]
    assert context.stats["reflection: instruction rewritten"] == 1
    assert context.stats["reflection: instruction kept original (malformed)"] == 3
    assert context.stats["reflection: instruction kept original (answer empty)"] == 1
    assert context.stats["reflection: instruction kept original (unchanged)"] == 1


def test_response_reflection_falls_back_to_the_original_response(tmp_path: Path) -> None:
    pairs = [
        ("rev: abc =", "cab"),
        ("up: ab =", "AB"),
        ("sort: ba =", "ba"),
        ("rev: ab =", "a"),
        ("up: c =", "x"),
    ]
    bad = {
        suite.fix_prompt("sort: ba =", "ba"): "",  # empty
        suite.fix_prompt("rev: ab =", "a"): "ba",  # cut off at the length limit
        suite.fix_prompt("up: c =", "x"): " ?! ",  # no content
    }
    finish = {suite.fix_prompt("rev: ab =", "a"): "length"}
    context = make_context(tmp_path, _teacher_saying(bad, finish))
    assert reflect_responses(context, pairs) == ["cba", "AB", "ba", "a", "x"]
    assert context.stats["reflection: response rewritten"] == 1
    assert context.stats["reflection: response unchanged"] == 1
    for problem in ("empty", "truncated", "no content"):
        assert context.stats[f"reflection: response kept original ({problem})"] == 1


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError, match="num_instructions"):
        reflection_tuning_recipe(num_instructions=0)
    with pytest.raises(ValueError, match="temperature"):
        reflection_tuning_recipe(temperature=-1.0)


def test_reflection_tuning_recycles_every_pair(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    data = reflection_tuning_recipe(num_instructions=12).data.build(context)
    recycled = [(e.segments[0][0], e.segments[1][0]) for e in data.examples]
    pool = alpaca_pool(context, 12)  # the same requests: answered from the cache
    assert len(recycled) == len(pool) == 12
    # The exact teacher deepens in place (one more operation, same input) and answers exactly.
    changed = [(old, new) for (old, _), (new, _) in zip(pool, recycled, strict=True) if old != new]
    assert len(changed) == context.stats["reflection: instruction rewritten"] > 0
    for old, new in changed:
        before, after = suite.parse_instruction(old), suite.parse_instruction(new)
        assert after.input == before.input and suite.depth_of(after) == suite.depth_of(before) + 1
    assert correct_rate(recycled) == 1.0 == context.stats["recycled: responses correct"]


def test_widen_asks_for_a_different_instruction_instead(tmp_path: Path) -> None:
    teacher = OracleTeacher()
    context = make_context(tmp_path, teacher)
    pool = alpaca_pool(context, 12)
    reflected = reflect_instructions(context, pool, operation="widen")
    asked = set(teacher.prompts)
    assert all(suite.widen_prompt(x) in asked for x, _ in pool)
    assert not any(suite.deepen_prompt(x) in asked for x, _ in pool)
    changed = [(old, new) for (old, _), (new, _) in zip(pool, reflected, strict=True) if old != new]
    assert len(changed) == context.stats["reflection: instruction rewritten"] > 0
    assert correct_rate(reflected) == 1.0  # the exact teacher answers the new instructions exactly
    with pytest.raises(ValueError, match="instruction_operation must be one of deepen, widen"):
        reflect_instructions(context, pool, operation="rewrite")
