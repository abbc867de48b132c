"""Lion: hard-example selection (threshold 1, boundary included), the referees, the step budget
split over imitation stages, and the loop's pool bookkeeping on an exact oracle teacher."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impls.black_box.instruction_following import lion
from reference_impls.black_box.instruction_following.lion import (
    lion_recipe,
    referee_scores,
    split_hard,
    split_steps,
)
from reference_impls.tasks import instructions as suite
from tests.support.fakes import OracleTeacher, make_context


def _instructions(*prompts: str) -> list:
    parsed = [suite.parse_instruction(p) for p in prompts]
    assert all(p is not None for p in parsed)
    return parsed


ITEMS = _instructions("rev: abc =", "up: ab =", "sort: cba =", "dedup: aab =", "copy: xy =", "rev up: ab =")


def test_hard_is_a_score_gap_of_at_least_one() -> None:
    teacher = [10.0, 5.5, 5.5, 1.0, 7.0, 10.0]
    student = [9.0, 4.5, 4.75, 10.0, 7.0, 1.0]  # gaps 1, 1, 0.75, -9, 0, 9
    hard, easy = split_hard(ITEMS, teacher, student)
    assert hard == [ITEMS[0], ITEMS[1], ITEMS[5]]
    assert easy == [ITEMS[2], ITEMS[3], ITEMS[4]]
    hard2, _ = split_hard(ITEMS, teacher, student, threshold=2.0)
    assert hard2 == [ITEMS[5]]
    with pytest.raises(ValueError):
        split_hard(ITEMS, teacher, student[:-1])


@pytest.mark.parametrize(
    ("total", "stages", "expected"),
    [(600, 4, [150, 150, 150, 150]), (10, 4, [3, 3, 2, 2]), (5, 1, [5]), (4, 4, [1, 1, 1, 1])],
)
def test_the_budget_is_split_evenly(total: int, stages: int, expected: list[int]) -> None:
    assert split_steps(total, stages) == expected
    assert sum(split_steps(total, stages)) == total


def test_too_few_steps_for_the_stages_is_an_error() -> None:
    with pytest.raises(ValueError, match="imitation stage"):
        split_steps(3, 4)


def test_exact_referee_scores_ten_or_one(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    answers = ["cba", "ab", " abc ", "ad", "", "BA"]  # right, wrong, right (spaces), wrong, empty, right
    assert referee_scores(context, ITEMS, answers, "exact", tag="t") == [10.0, 1.0, 10.0, 1.0, 1.0, 10.0]
    assert context.stats.get("teacher_requests", 0) == 0, "the exact referee asks no one"


def test_teacher_referee_judges_each_answer_once(tmp_path: Path) -> None:
    teacher = OracleTeacher(mistakes=lambda p, text: "maybe" if p == "judge: copy: xy =xy ?" else text)
    context = make_context(tmp_path, teacher)
    answers = ["cba", "ab", "abc", "ad", "xy", "BA"]
    scores = referee_scores(context, ITEMS, answers, "teacher", tag="t")
    # The oracle judges exactly; an unreadable verdict gives no credit and is counted.
    assert scores == [10.0, 1.0, 10.0, 1.0, 1.0, 10.0]
    assert context.stats["referee: unreadable verdicts (scored 1)"] == 1
    assert teacher.prompts == [suite.judge_prompt(e.prompt, a) for e, a in zip(ITEMS, answers, strict=True)]
    with pytest.raises(ValueError, match="referee"):
        referee_scores(context, ITEMS, answers, "gpt-4", tag="t")


def _run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    referee: str = "exact",
    always_wrong: bool = False,
    **kw,
):
    """Run Lion's loop on the oracle with a scripted student: it answers every other Cache Pool
    instruction exactly (or none) and the others wrongly. Records imitation and generation calls."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    teacher = OracleTeacher()
    context = make_context(tmp_path, teacher, steps=kw.pop("steps", 6))
    stages, generations = [], []

    def fine_tune(model, examples, steps, description):
        stages.append((id(model), len(examples), steps))
        return [float(len(stages))] * steps

    def student_answers(model, prompts):
        parsed = [suite.parse_instruction(p) for p in prompts]
        return [
            e.response if i % 2 == 0 and not always_wrong else e.response + "z" for i, e in enumerate(parsed)
        ]

    real_generate = lion.generate_from

    def generate_from(context, examples, target, settings, novelty, *, tag):
        made = real_generate(context, examples, target, settings, novelty, tag=tag)
        generations.append((tag, [e.prompt for e in examples], target, len(made)))
        return made

    monkeypatch.setattr(context, "fine_tune", fine_tune)
    monkeypatch.setattr(context, "student_answers", student_answers)
    monkeypatch.setattr(lion, "generate_from", generate_from)
    data = lion_recipe(referee=referee, **kw).data.build(context)
    return context, data, stages, generations, teacher


def test_the_loop_grows_both_pools_and_trains_one_student(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, data, stages, generations, teacher = _run(
        tmp_path, monkeypatch, num_initial=10, iterations=2, new_per_iteration=4, steps=7
    )
    stats = context.stats
    new = [sum(made for tag, _, _, made in generations if tag.startswith(f"iteration {i} ")) for i in (1, 2)]
    # Imitation: one student, trained on the whole Train Pool each stage, the budget split 3 ways.
    assert len({model for model, _, _ in stages}) == 1
    assert [n for _, n, _ in stages] == [10, 10 + new[0], 10 + new[0] + new[1]]
    assert [s for _, _, s in stages] == [3, 2, 2]
    assert stats["curve"] == [1.0] * 3 + [2.0] * 2 + [3.0] * 2
    assert len(data.examples) == 10 + sum(new) and data.student is not None
    # Discrimination on the Cache Pool, which grows with the Train Pool: the teacher (oracle) is
    # right everywhere, the student on every other instruction, so hard = the student's misses.
    assert stats["iteration 1: hard"] + stats["iteration 1: easy"] == 10
    assert stats["iteration 2: hard"] + stats["iteration 2: easy"] == 10 + new[0]
    assert stats["iteration 1: hard"] == 5
    # Generation: 2 from hard and 2 from easy each iteration, one demonstration per request.
    assert [(tag, target) for tag, _, target, _ in generations] == [
        ("iteration 1 from hard", 2),
        ("iteration 1 from easy", 2),
        ("iteration 2 from hard", 2),
        ("iteration 2 from easy", 2),
    ]
    hard_demos, easy_demos = generations[0][1], generations[1][1]
    assert len(hard_demos) == 5 and not set(hard_demos) & set(easy_demos)
    requests = [p for p in teacher.prompts if p.startswith("new: ") and p.count(" | ") == 0]
    shown = {p[len("new: ") : -len(" >")] for p in requests}
    assert shown <= set(hard_demos) | set(easy_demos) | set(generations[2][1]) | set(generations[3][1])


def test_all_new_instructions_come_from_hard_when_nothing_is_easy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, _, _, generations, _ = _run(
        tmp_path, monkeypatch, num_initial=8, iterations=1, new_per_iteration=4, always_wrong=True, steps=2
    )
    assert context.stats["iteration 1: hard"] == 8
    assert [(tag, target) for tag, _, target, _ in generations] == [
        ("iteration 1 from hard", 4),
        ("iteration 1 from easy", 0),
    ]


def test_teacher_referee_agrees_with_exact_on_an_exact_judge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact, *_ = _run(tmp_path / "a", monkeypatch, num_initial=8, iterations=1, new_per_iteration=2, steps=2)
    judged, *_ = _run(
        tmp_path / "b",
        monkeypatch,
        referee="teacher",
        num_initial=8,
        iterations=1,
        new_per_iteration=2,
        steps=2,
    )
    assert judged.stats["iteration 1: hard"] == exact.stats["iteration 1: hard"] == 4
    assert judged.stats["teacher_requests"] > exact.stats["teacher_requests"]


def test_a_real_student_runs_the_loop(tmp_path: Path) -> None:
    context = make_context(tmp_path, steps=2)
    data = lion_recipe(num_initial=4, iterations=1, new_per_iteration=2).data.build(context)
    assert data.student is not None and len(context.stats["curve"]) == 2
    assert context.stats["iteration 1: hard"] + context.stats["iteration 1: easy"] == 4


def test_empty_teacher_answers_make_nothing_hard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = OracleTeacher(mistakes=lambda p, text: text if p.startswith("new") else "")
    context = make_context(tmp_path, teacher, steps=2)
    monkeypatch.setattr(context, "fine_tune", lambda model, examples, steps, description: [0.0] * steps)
    monkeypatch.setattr(context, "student_answers", lambda model, prompts: ["?"] * len(prompts))
    data = lion_recipe(num_initial=6, iterations=1, new_per_iteration=2).data.build(context)
    assert data.examples == []
    assert context.stats["iteration 1: hard"] == 0


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"referee": "gpt-4"}, "referee"),
        ({"hard_threshold": 0.0}, "hard_threshold"),
        ({"hard_threshold": 9.5}, "hard_threshold"),
        ({"hard_share": 1.5}, "hard_share"),
        ({"num_initial": 0}, "num_initial"),
    ],
)
def test_bad_hyperparameters_are_named(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        lion_recipe(**overrides)
