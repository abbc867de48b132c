"""Stanford Alpaca: seed-only demonstrations sampled at T = 1, the pipeline end to end with an
exact oracle teacher, and its hyper-parameter checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impls.black_box.instruction_following._bootstrap import GenerationSettings
from reference_impls.black_box.instruction_following.alpaca import alpaca_recipe, alpaca_settings
from reference_impls.black_box.pipeline import TextPipeline
from tests.support.fakes import (
    RecordingOracle,
    check_end_to_end_and_cached_rerun,
    make_context,
)


def test_defaults_are_the_repositorys() -> None:
    assert alpaca_settings() == GenerationSettings(
        human_demos=3, machine_demos=0, temperature=1.0, top_p=1.0, novelty_threshold=0.7
    )
    recipe = alpaca_recipe()
    assert recipe.method_id == "alpaca" and recipe.evaluation == "instructions"
    assert isinstance(recipe.data, TextPipeline) and recipe.data.teacher_access == "text"
    assert recipe.hyperparameters == {
        "num_instructions": 600,
        "prompt_instructions": 3,
        "temperature": 1.0,
        "top_p": 1.0,
        "novelty_threshold": 0.7,
    }


def test_requests_show_seed_tasks_only_and_sample_at_temperature_one(tmp_path: Path) -> None:
    teacher = RecordingOracle()
    context = make_context(tmp_path, teacher)
    data = alpaca_recipe(num_instructions=30).data.build(context)
    seeds = {e.prompt.strip() for e in context.seeds}
    generation = [r for r in teacher.requests if r.prompt.startswith("new:")]
    answers = [r for r in teacher.requests if not r.prompt.startswith("new:")]
    assert generation and answers
    for request in generation:
        demos = request.prompt[len("new: ") : -len(" >")].split(" | ")
        assert len(demos) == 3 and set(demos) <= seeds  # never an instruction generated earlier
        assert (request.temperature, request.top_p) == (1.0, 1.0)
    assert all(r.temperature == 0.0 for r in answers)  # the answers are greedy here
    assert len(data.examples) == context.stats["alpaca answers: answers kept"] <= 30
    assert context.stats["alpaca: kept"] == 30


def test_pipeline_end_to_end_and_rerun_makes_no_teacher_call(tmp_path: Path) -> None:
    check_end_to_end_and_cached_rerun(tmp_path, alpaca_recipe(num_instructions=40), 40)


def test_recipes_refuse_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="num_instructions"):
        alpaca_recipe(num_instructions=0)
