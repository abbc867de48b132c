"""Personalized distillation: only failed attempts reach the teacher, refinements are checked by
the tests, and the three variants' data formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impls.black_box.instruction_following.persd import (
    Refinement,
    passes,
    persd_recipe,
    personalised_examples,
    refine_failures,
)
from reference_impls.run import RunConfig, run_recipe
from reference_impls.tasks import instructions as suite
from tests.support.fakes import OracleTeacher, make_context

TASKS = suite.make_instructions("train", 6)


def fix_prompts(teacher: OracleTeacher) -> list[str]:
    return [p for p in teacher.prompts if p.startswith("fix: ")]


def test_only_failed_attempts_are_sent_and_failing_refinements_are_dropped(tmp_path: Path) -> None:
    attempts = [t.response for t in TASKS[:3]] + ["zzz", "", TASKS[5].response + "x"]
    fix_wrong = suite.fix_prompt(TASKS[3].prompt, "zzz")
    fix_empty = suite.fix_prompt(TASKS[4].prompt, "")

    def mistakes(prompt: str, text: str) -> str:
        # The teacher's refinement of task 3 is wrong; of task 4 it is empty.
        return {fix_wrong: text + "q", fix_empty: ""}.get(prompt, text)

    teacher = OracleTeacher(mistakes=mistakes)
    context = make_context(tmp_path, teacher)
    kept = refine_failures(context, TASKS, attempts)
    assert teacher.prompts == [
        suite.fix_prompt(t.prompt, a) for t, a in zip(TASKS[3:], attempts[3:], strict=True)
    ]
    assert kept == [Refinement(TASKS[5], attempts[5], TASKS[5].response)]
    assert context.stats["attempts"] == 6 and context.stats["attempts passed"] == 3
    assert context.stats["refinements requested"] == 3
    assert context.stats["refinements dropped (failed the tests)"] == 1
    assert context.stats["refinements dropped (empty)"] == 1
    assert context.stats["refinements kept"] == 1


def test_all_passed_makes_no_teacher_call(tmp_path: Path) -> None:
    teacher = OracleTeacher()
    context = make_context(tmp_path, teacher)
    assert refine_failures(context, TASKS, [f" {t.response} " for t in TASKS]) == []
    assert teacher.calls == 0 and context.stats["attempts passed"] == 6


def test_variant_formats() -> None:
    task = TASKS[3]
    refinement = Refinement(task, "zzz", task.response)
    persd = personalised_examples([refinement], "persd")
    refine = personalised_examples([refinement], "refine")
    combined = personalised_examples([refinement], "combined")
    assert [e.segments for e in persd] == [((task.prompt, False), (task.response, True))]
    fix = suite.fix_prompt(task.prompt, "zzz")
    assert [e.segments for e in refine] == [((fix, False), (task.response, True))]
    assert combined == persd + refine
    with pytest.raises(ValueError, match="variant"):
        personalised_examples([refinement], "both")


def test_passes_is_the_exact_check() -> None:
    assert passes(TASKS[0], f"{TASKS[0].response}\n")
    assert not passes(TASKS[0], TASKS[0].response + "x")


def test_pipeline_sends_the_students_failures_only_and_trains_the_attempting_student(tmp_path: Path) -> None:
    teacher = OracleTeacher()
    context = make_context(tmp_path, teacher, steps=2)
    recipe = persd_recipe(num_tasks=12, task_source="suite", variant="refine", epochs=1)
    data = recipe.data.build(context)
    tasks = {t.prompt: t for t in suite.make_instructions("train", 12)}
    prompts = fix_prompts(teacher)
    assert prompts == teacher.prompts  # suite tasks: the teacher is asked for refinements only
    assert len(prompts) == context.stats["attempts"] - context.stats["attempts passed"] > 0
    for prompt in prompts:  # "fix: <instruction>=<attempt> ?": every attempt sent had failed
        instruction, _, attempt = prompt[len("fix: ") : -len(" ?")].partition("=")
        assert not passes(tasks[instruction + "="], attempt)
    # The oracle's refinements all pass: one refine-format example each.
    assert context.stats["refinements kept"] == len(prompts) == len(data.examples)
    assert all(e.segments[0][0].startswith("fix: ") for e in data.examples)
    assert data.student is not None and context.stats["curve"]


def test_bootstrapped_tasks_end_to_end(tmp_path: Path) -> None:
    config = RunConfig(
        device="cpu", steps=2, eval_size=8, cache=str(tmp_path / "cache.jsonl"), progress=False
    )
    teacher = OracleTeacher()
    result = run_recipe(persd_recipe(num_tasks=8, epochs=1), config, teacher=teacher)
    stats = result.config["pipeline"]
    assert stats["persd tasks: kept"] == stats["attempts"] == 8
    assert stats["refinements kept"] == stats["refinements requested"]
    assert len(result.data) == 2 * stats["refinements kept"]  # combined: both formats
    assert result.metrics["teacher"]["exact_match"] == 1.0


def test_bad_hyperparameters_name_the_parameter() -> None:
    for name, value in [
        ("num_tasks", 0),
        ("task_source", "web"),
        ("variant", "both"),
        ("attempt_temperature", -1.0),
        ("epochs", 0),
    ]:
        with pytest.raises(ValueError, match=name):
            persd_recipe(**{name: value})
