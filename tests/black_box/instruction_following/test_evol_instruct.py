"""Evol-Instruct: each elimination rule on crafted teacher output, the pool across rounds (failed
evolutions retried, survivors replacing their originals), and the in-depth / in-breadth ratio."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from reference_impls.black_box.instruction_following.evol_instruct import (
    IN_BREADTH,
    IN_DEPTH,
    RULE_COPIED,
    RULE_MALFORMED,
    RULE_NO_CONTENT,
    RULE_NO_GAIN,
    RULE_STRUGGLED,
    check_answer,
    check_evolution,
    draw_evolutions,
    evol_instruct_recipe,
    evolve_round,
)
from reference_impls.tasks import instructions as suite
from reference_impls.teachers.text import Completion
from tests.support.fakes import OracleTeacher, make_context


def _instruction(prompt: str):
    parsed = suite.parse_instruction(prompt)
    assert parsed is not None
    return parsed


def _said(text: str, finish_reason: str = "stop") -> Completion:
    return Completion(text, finish_reason)


REV = _instruction("rev: abc =")


@pytest.mark.parametrize(
    ("kind", "rewrite", "finish", "rule"),
    [
        (IN_DEPTH, "deepen: rev: abc =", "stop", RULE_COPIED),  # rule 4: the prompt copied
        (IN_DEPTH, "rev widen: abc =", "stop", RULE_COPIED),
        (IN_BREADTH, "new: up: xyz =", "stop", RULE_COPIED),
        (IN_DEPTH, "rev xx: abc =", "stop", RULE_MALFORMED),  # rule 4: not an instruction
        (IN_DEPTH, "", "stop", RULE_MALFORMED),
        (IN_DEPTH, "rev up: abc", "length", RULE_MALFORMED),  # cut off: not trusted
        (IN_DEPTH, "rev: abc =", "stop", RULE_NO_GAIN),  # rule 1: unchanged
        (IN_BREADTH, " rev: abc = ", "stop", RULE_NO_GAIN),
        (IN_DEPTH, "up: abc =", "stop", RULE_NO_GAIN),  # in depth, but no operation added
        (IN_DEPTH, "rev: abcd =", "stop", RULE_NO_GAIN),
        (IN_BREADTH, "rev: xyz =", "stop", RULE_NO_GAIN),  # in breadth, but the same task
        (IN_DEPTH, "rev up: abc =", "stop", None),
        (IN_DEPTH, "sort rev dedup: abc =", "stop", None),
        (IN_BREADTH, "sort: xyzw =", "stop", None),
        (IN_BREADTH, "add: 12+3 =", "stop", None),
    ],
)
def test_instruction_rules(kind: str, rewrite: str, finish: str, rule: str | None) -> None:
    evolved, found = check_evolution(REV, kind, _said(rewrite, finish))
    assert found == rule
    assert (evolved is None) == (rule is not None)
    if evolved is not None:
        assert evolved.prompt == rewrite.strip()


def test_a_depth_three_instruction_cannot_gain_depth() -> None:
    deep = _instruction("rev up sort: abc =")
    assert check_evolution(deep, IN_DEPTH, _said("rev up sort: abc ="))[1] == RULE_NO_GAIN
    assert check_evolution(deep, IN_BREADTH, _said("dedup up sort: abc ="))[1] is None


@pytest.mark.parametrize(
    ("answer", "finish", "rule"),
    [
        ("", "stop", RULE_STRUGGLED.format("empty")),  # rule 2
        ("   ", "stop", RULE_STRUGGLED.format("empty")),
        ("CBA", "length", RULE_STRUGGLED.format("truncated")),
        ("?!.", "stop", RULE_NO_CONTENT),  # rule 3
        ("a", "stop", None),  # a single letter is a real answer on this suite
        ("CBA", "stop", None),
        ("15", "stop", None),
    ],
)
def test_answer_rules(answer: str, finish: str, rule: str | None) -> None:
    assert check_answer(_said(answer, finish)) == rule


def test_one_round_eliminates_by_each_rule_and_keeps_the_failed_originals(tmp_path: Path) -> None:
    pool = [
        _instruction(p)
        for p in (
            "rev: abc =",
            "add: 12+3 =",
            "sort: dcb =",
            "up: xyz =",
            "dedup: aab =",
            "copy: qq =",
            "rev up: kk =",
        )
    ]
    kinds = [IN_DEPTH, IN_DEPTH, IN_DEPTH, IN_BREADTH, IN_DEPTH, IN_BREADTH, IN_DEPTH]
    scripted = {
        "deepen: sort: dcb =": "deepen: sort: dcb =",  # copies its prompt (4)
        "widen: up: xyz =": "sort dedup: qqq =",
        "sort dedup: qqq =": "",  # the teacher cannot answer (2)
        "deepen: dedup: aab =": "dedup rev: aab =",
        "dedup rev: aab =": "..",  # no content (3)
        "widen: copy: qq =": "copy qq",  # not an instruction (4)
        "deepen: rev up: kk =": "rev up sort: kk =",
    }
    teacher = OracleTeacher(
        mistakes=lambda prompt, text: scripted.get(prompt, text),
        finish_reason=lambda prompt, text: "length" if prompt == "rev up sort: kk =" else "stop",  # (2)
    )
    context = make_context(tmp_path, teacher)
    next_pool, survivors = evolve_round(context, pool, kinds, tag="round", temperature=1.0, top_p=0.95)

    # The oracle deepens "rev" (kept); "add" is atomic, so its rewrite is unchanged (1).
    assert [e.prompt for e in next_pool[1:]] == [e.prompt for e in pool[1:]]
    assert next_pool[0].task.split(" ").count("rev") == 1 and suite.depth_of(next_pool[0]) == 2
    assert len(survivors) == 1
    assert survivors[0].segments == ((next_pool[0].prompt, False), (next_pool[0].response, True))
    eliminated = {k: v for k, v in context.stats.items() if k.startswith("evol-instruct: eliminated")}
    assert eliminated == {
        f"evol-instruct: eliminated ({RULE_NO_GAIN})": 1,
        f"evol-instruct: eliminated ({RULE_COPIED})": 1,
        f"evol-instruct: eliminated ({RULE_STRUGGLED.format('empty')})": 1,
        f"evol-instruct: eliminated ({RULE_STRUGGLED.format('truncated')})": 1,
        f"evol-instruct: eliminated ({RULE_NO_CONTENT})": 1,
        f"evol-instruct: eliminated ({RULE_MALFORMED})": 1,
    }
    # Only rewrites that passed rules 4 and 1 were answered.
    answered = [p for p in teacher.prompts if not p.startswith(("deepen: ", "widen: "))]
    assert sorted(answered) == sorted(
        [next_pool[0].prompt, "sort dedup: qqq =", "dedup rev: aab =", "rev up sort: kk ="]
    )


def test_failed_evolutions_are_retried_next_round(tmp_path: Path) -> None:
    seen: set[str] = set()

    def fail_first_try(prompt: str, text: str) -> str:
        if prompt.startswith("deepen: ") and prompt not in seen:
            seen.add(prompt)
            return "not an instruction"
        return text

    context = make_context(tmp_path, OracleTeacher(mistakes=fail_first_try))
    pool = [_instruction(p) for p in ("rev: abc =", "sort: xyz =", "up dedup: aab =")]
    round1, kept1 = evolve_round(context, pool, [IN_DEPTH] * 3, tag="r1", temperature=1.0, top_p=0.95)
    assert round1 == pool and kept1 == []
    round2, kept2 = evolve_round(context, round1, [IN_DEPTH] * 3, tag="r2", temperature=1.0, top_p=0.95)
    assert len(kept2) == 3
    for before, after in zip(pool, round2, strict=True):
        assert after.input == before.input and suite.depth_of(after) == suite.depth_of(before) + 1
    # Round 3 evolves the survivors, not the originals.
    evolve_round(context, round2, [IN_DEPTH] * 3, tag="r3", temperature=1.0, top_p=0.95)
    assert context.teacher.prompts[-3:] == [suite.deepen_prompt(e.prompt) for e in round2]


def test_the_pipeline_mixes_the_initial_pool_with_every_round(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    data = evol_instruct_recipe(num_initial=12, rounds=3).data.build(context)
    stats = context.stats
    survivors = [stats[f"evol-instruct: round {r} survivors"] for r in (1, 2, 3)]
    assert stats["alpaca pool: kept"] == 12
    assert len(data.examples) == stats["alpaca pool answers: answers kept"] + sum(survivors)
    assert data.student is None
    assert stats["evol-instruct: in-depth rewrites"] + stats["evol-instruct: in-breadth rewrites"] == 3 * 12
    depths = {d: stats.get(f"training data: depth {d}", 0) for d in (1, 2, 3)}
    assert sum(depths.values()) == len(data.examples)
    assert depths[3] > 0, "in-depth evolution must reach depth 3 within three rounds"
    assert stats["evol-instruct: evolved answers correct (share)"] == 1.0  # the oracle is exact


@pytest.mark.parametrize("share", [0.0, 0.8, 1.0])
def test_in_depth_share(share: float) -> None:
    kinds = draw_evolutions(random.Random(0), 20000, share)
    assert set(kinds) <= {IN_DEPTH, IN_BREADTH}
    assert kinds.count(IN_DEPTH) / len(kinds) == pytest.approx(share, abs=0.01)


def test_the_pipeline_asks_in_depth_four_times_in_five(tmp_path: Path) -> None:
    teacher = OracleTeacher()
    context = make_context(tmp_path, teacher)
    evol_instruct_recipe(num_initial=40, rounds=4).data.build(context)
    depth = sum(p.startswith("deepen: ") for p in teacher.prompts)
    breadth = sum(p.startswith("widen: ") for p in teacher.prompts)
    assert depth + breadth == 160
    assert 0.7 < depth / 160 < 0.9


def test_a_teacher_that_answers_nothing_yields_no_data(tmp_path: Path) -> None:
    # It writes new instructions, but its answers and rewrites are empty.
    silent = OracleTeacher(mistakes=lambda prompt, text: text if prompt.startswith("new") else "")
    context = make_context(tmp_path, silent)
    data = evol_instruct_recipe(num_initial=5, rounds=2).data.build(context)
    assert data.examples == []
    assert context.stats["alpaca pool answers: dropped (empty)"] == 5
    assert context.stats[f"evol-instruct: eliminated ({RULE_MALFORMED})"] == 10


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"num_initial": 0}, "num_initial"),
        ({"rounds": -1}, "rounds"),
        ({"in_depth_share": 1.5}, "in_depth_share"),
        ({"top_p": 0.0}, "top_p"),
    ],
)
def test_bad_hyperparameters_are_named(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        evol_instruct_recipe(**overrides)
