"""Self-Instruct: human and machine demonstrations in each request, the extra instances of each
kept task, the pipeline end to end with an exact oracle teacher, and its hyper-parameter checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impls.black_box.instruction_following.self_instruct import (
    generate_instances,
    self_instruct_recipe,
)
from reference_impls.tasks import instructions as suite
from tests.support.fakes import (
    RecordingOracle,
    check_end_to_end_and_cached_rerun,
    make_context,
)


def test_defaults_are_the_scripts() -> None:
    recipe = self_instruct_recipe()
    assert recipe.method_id == "self-instruct" and recipe.evaluation == "instructions"
    assert recipe.hyperparameters == {
        "num_instructions": 600,
        "human_demos": 3,
        "machine_demos": 1,
        "temperature": 0.7,
        "top_p": 0.5,
        "novelty_threshold": 0.7,
        "instances_per_instruction": 1,
    }


def test_requests_mix_seed_and_generated_instructions(tmp_path: Path) -> None:
    teacher = RecordingOracle()
    context = make_context(tmp_path, teacher)
    # More than one round of 256 requests, so the later rounds can show generated instructions.
    self_instruct_recipe(num_instructions=300, instances_per_instruction=0).data.build(context)
    seeds = {e.prompt.strip() for e in context.seeds}
    rounds = [r for r in teacher.requests if r.prompt.startswith("new:")]
    assert len(rounds) > 256 and all((r.temperature, r.top_p) == (0.7, 0.5) for r in rounds)
    shown = [r.prompt[len("new: ") : -len(" >")].split(" | ") for r in rounds]
    assert all(len(demos) == 3 and set(demos) <= seeds for demos in shown[:256])  # none generated yet
    for demos in shown[256:]:  # 3 human + 1 machine demonstration (6 + 2 of 8 in the paper)
        assert len(demos) == 4 and sum(d in seeds for d in demos) == 3
    assert context.stats["self-instruct: kept"] == 300


def test_instances_are_new_inputs_of_the_same_task(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    instructions = suite.make_instructions("train", 10)
    instances = generate_instances(context, instructions, 2, temperature=0.7, top_p=0.5)
    tasks = {e.task for e in instructions}
    prompts = [e.prompt for e in instances]
    assert instances and all(e.task in tasks for e in instances)
    assert len(set(prompts)) == len(prompts) and not set(prompts) & {e.prompt for e in instructions}
    kept, dropped = (
        context.stats["self-instruct instances: kept"],
        context.stats.get("self-instruct instances: dropped", 0),
    )
    assert kept == len(instances) and kept + dropped == 2 * len(instructions)
    assert generate_instances(context, instructions, 0, temperature=0.7, top_p=0.5) == []


def test_pipeline_end_to_end_and_rerun_makes_no_teacher_call(tmp_path: Path) -> None:
    check_end_to_end_and_cached_rerun(tmp_path, self_instruct_recipe(num_instructions=40), 40)


def test_recipes_refuse_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="num_instructions"):
        self_instruct_recipe(instances_per_instruction=-1)
