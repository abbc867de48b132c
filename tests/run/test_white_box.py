"""The teacher cache and the run harness, end to end with tiny budgets (mechanics, not quality)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from reference_impls.core.data_sources import DatasetResponses, SourceContext, TeacherGenerated
from reference_impls.core.models import build_decoder, build_student, build_teacher_config
from reference_impls.core.recipe import Recipe
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.run import RunConfig, run_recipe
from reference_impls.run.scoring import HELD_OUT_SET_METRICS, reported_metrics
from reference_impls.run.strings import check_same_vocabulary
from reference_impls.tasks.strings import make_split, save_jsonl
from reference_impls.teachers import embedded as teacher_module
from reference_impls.teachers.embedded import QUICK_RECIPE, load_or_train_teacher, teacher_dir
from tests.support.metrics import expected_names


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor
) -> torch.Tensor:
    """A private per-token forward KL (the shared losses module is tested on its own)."""
    mask = labels != -100
    log_p = torch.log_softmax(teacher_logits[mask].float(), -1)
    log_q = torch.log_softmax(student_logits[mask].float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


RECIPE = Recipe("forward-kl", data=DatasetResponses(), loss=forward_kl, hyperparameters={"temperature": 1.0})


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KDATLAS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -------------------------------------------------------------------------------- teacher cache


def test_teacher_is_trained_once_then_loaded(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = load_or_train_teacher("cpu", progress=False, recipe=QUICK_RECIPE)
    target = teacher_dir(QUICK_RECIPE)
    assert target.parent.parent == cache and (target / "model.safetensors").exists()
    card = json.loads((target / "teacher_card.json").read_text())
    assert card["recipe"]["steps"] == QUICK_RECIPE.steps and 0 <= card["test_exact_match"] <= 1

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached teacher was retrained")

    monkeypatch.setattr(teacher_module, "train_teacher", fail)
    again, _ = load_or_train_teacher("cpu", progress=False, recipe=QUICK_RECIPE)
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7]])
    assert torch.equal(model(ids).logits, again(ids).logits)


def test_interrupted_teacher_write_leaves_no_cache_entry(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: object, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(type(build_student(build_tokenizer(), 0)), "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_or_train_teacher("cpu", progress=False, recipe=QUICK_RECIPE)
    assert not teacher_dir(QUICK_RECIPE).exists()
    assert list(teacher_dir(QUICK_RECIPE).parent.iterdir()) == []  # no staging left behind


def test_teacher_key_changes_with_the_recipe() -> None:
    assert teacher_dir(QUICK_RECIPE) != teacher_dir(teacher_module.TeacherRecipe())
    assert teacher_dir(QUICK_RECIPE).name.startswith("v1-")


# ---------------------------------------------------------------------------------- data sources


def test_data_sources() -> None:
    tokenizer = build_tokenizer()
    examples = make_split("train", 4)
    teacher = build_decoder(build_teacher_config(tokenizer), 0)
    context = SourceContext(teacher=teacher, tokenizer=tokenizer, max_new_tokens=3)
    assert DatasetResponses().responses(examples, context) == [e.response for e in examples]
    generated = TeacherGenerated().responses(examples, context)
    assert len(generated) == 4 and all(len(r) <= 3 for r in generated)
    with pytest.raises(ValueError, match="greedy"):
        TeacherGenerated(decoding="beam")
    with pytest.raises(ValueError, match="teacher"):
        TeacherGenerated().responses(examples, SourceContext(teacher=None, tokenizer=tokenizer))


# ------------------------------------------------------------------------------------ the harness


def test_run_recipe_end_to_end_with_the_embedded_teacher(cache: Path, tiny_run: dict[str, Any]) -> None:
    config = RunConfig(device="cpu", **tiny_run)
    result = run_recipe(RECIPE, config, teacher_recipe=QUICK_RECIPE)
    assert set(result.metrics) == {"teacher", "baseline", "distilled"}
    for metrics in result.metrics.values():
        assert set(metrics) == expected_names(metrics, reported_metrics(suite=True))
        assert 0 <= metrics["exact_match"] <= 1 and 0 <= metrics["rouge_l"] <= 1
    assert result.metrics["teacher"]["token_kl_to_teacher"] == 0.0
    assert result.metrics["distilled"]["token_kl_to_teacher"] > 0
    assert [len(c) for c in result.curves.values()] == [2, 2]
    json.dumps(result.config)  # serialisable
    assert result.config["hyperparameters"] == {"temperature": 1.0}
    assert result.config["run"]["steps"] == 2 and result.config["suite_version"] == "v1"
    assert result.config["baseline_cached"] is False
    assert result.seconds["total"] > 0

    # The baseline is method-independent: a second run reuses it from the cache.
    again = run_recipe(RECIPE, config, teacher_recipe=QUICK_RECIPE)
    assert again.config["baseline_cached"] is True
    assert again.metrics["baseline"] == result.metrics["baseline"]
    assert again.curves["baseline"] == result.curves["baseline"]
    assert again.metrics["distilled"] == pytest.approx(result.metrics["distilled"])  # deterministic


def test_objective_without_teacher_logits_gets_none(cache: Path, tiny_run: dict[str, Any]) -> None:
    seen = []

    def sequence_level(
        student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor
    ) -> torch.Tensor:
        seen.append(teacher_logits)
        return torch.nn.functional.cross_entropy(
            student_logits.flatten(0, 1), labels.flatten(), ignore_index=-100
        )

    sequence_level.needs_teacher = False  # type: ignore[attr-defined]  # learns from the teacher's text
    recipe = Recipe("seqkd", data=TeacherGenerated(), loss=sequence_level)
    result = run_recipe(recipe, RunConfig(device="cpu", **tiny_run), teacher_recipe=QUICK_RECIPE)
    assert seen == [None, None]
    assert result.config["data_source"] == {"name": "teacher", "decoding": "greedy"}


def _save_pair(tmp_path: Path, student_tokenizer_extra: str | None = None) -> tuple[str, str]:
    tokenizer = build_tokenizer()
    teacher = build_decoder(build_teacher_config(tokenizer), 0)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    if student_tokenizer_extra:
        tokenizer.add_tokens([student_tokenizer_extra])
    student = build_student(tokenizer, 1)
    student.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    return str(tmp_path / "teacher"), str(tmp_path / "student")


def test_run_recipe_with_local_model_paths_and_jsonl(
    cache: Path, tmp_path: Path, tiny_run: dict[str, Any]
) -> None:
    teacher, student = _save_pair(tmp_path)
    data, dolly, vicuna = tmp_path / "data.jsonl", tmp_path / "dolly.jsonl", tmp_path / "sets" / "vicuna.jsonl"
    save_jsonl(make_split("train", 40), data)
    save_jsonl(make_split("test", 6), dolly)
    vicuna.parent.mkdir()
    save_jsonl(make_split("test", 5)[1:], vicuna)
    config = RunConfig(
        device="cpu", teacher=teacher, student=student, data=str(data), eval_data=(str(dolly), str(vicuna)), **tiny_run
    )
    result = run_recipe(RECIPE, config)
    assert set(result.metrics) == {"teacher", "baseline", "distilled"}
    # JSONL data has no oracle, prompt edits or OOD split: those metrics are left out, not faked;
    # each further held-out set is scored under its file's stem.
    per_set = {f"{metric} ({name})" for metric in HELD_OUT_SET_METRICS for name in ("dolly", "vicuna")}
    for metrics in result.metrics.values():
        assert set(metrics) == set(reported_metrics(suite=False)) | per_set
        assert all(0 <= metrics[name] <= 1 for name in per_set)
    assert result.config["data"] == {
        "id": result.config["data"]["id"],
        "train_examples": 32,
        "eval_examples": 8,
        "held_out_sets": {"dolly": 6, "vicuna": 4},
    }
    assert str(dolly) in result.config["data"]["id"]  # a changed held-out set is another run
    assert result.config["teacher"]["id"].startswith(teacher)


def test_held_out_sets_need_data_and_distinct_names(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "dolly.jsonl", tmp_path / "b" / "dolly.jsonl"
    for path in (first, second):
        path.parent.mkdir()
        save_jsonl(make_split("test", 2), path)
    with pytest.raises(ValueError, match="give --data"):
        run_recipe(RECIPE, RunConfig(device="cpu", eval_data=(str(first),)))
    with pytest.raises(ValueError, match="both named 'dolly'"):
        run_recipe(RECIPE, RunConfig(device="cpu", data=str(first), eval_data=(str(first), str(second))))


def test_vocabulary_mismatch_names_both_sizes_and_the_cross_tokenizer_methods(
    cache: Path, tmp_path: Path, tiny_run: dict[str, Any]
) -> None:
    teacher, student = _save_pair(tmp_path, student_tokenizer_extra="<extra>")
    with pytest.raises(ValueError) as error:
        run_recipe(RECIPE, RunConfig(device="cpu", teacher=teacher, student=student, **tiny_run))
    message = str(error.value)
    assert "100 tokens" in message and "101 tokens" in message
    assert "`uld`" in message and "`dskd`" in message


def test_check_same_vocabulary_accepts_identical_tokenizers() -> None:
    check_same_vocabulary(build_tokenizer(), build_tokenizer())


def test_bad_device_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="device"):
        run_recipe(RECIPE, RunConfig(device="tpu"))


@pytest.mark.parametrize("method_id", ["gkd", "minillm", "dskd"])
def test_the_same_recipe_object_runs_twice_with_the_same_outcome(
    cache: Path, tiny_run: dict[str, Any], method_id: str
) -> None:
    # Online sources count their origins and keep a rollout, DSKD's step holds its projectors: a
    # run must start from the recipe as built, not from what an earlier run left in it.
    from reference_impls.registry import get_method

    recipe = get_method(method_id).build_recipe()
    config = RunConfig(device="cpu", **{**tiny_run, "steps": 4})
    first = run_recipe(recipe, config, teacher_recipe=QUICK_RECIPE)
    second = run_recipe(recipe, config, teacher_recipe=QUICK_RECIPE)
    assert second.curves["distilled"] == first.curves["distilled"]
    assert second.metrics == first.metrics
    assert second.config["data_source"] == first.config["data_source"]
    if "origins" in first.config["data_source"]:
        assert sum(first.config["data_source"]["origins"].values()) == 4  # this run's steps only


def test_a_gpt2_family_student_runs_and_is_recorded(cache: Path, tiny_run: dict[str, Any]) -> None:
    result = run_recipe(
        RECIPE, RunConfig(device="cpu", student_family="gpt2", **tiny_run), teacher_recipe=QUICK_RECIPE
    )
    assert set(result.metrics["distilled"]) == expected_names(
        result.metrics["distilled"], reported_metrics(suite=True)
    )
    assert result.config["run"]["student_family"] == "gpt2"
    llama = run_recipe(RECIPE, RunConfig(device="cpu", **tiny_run), teacher_recipe=QUICK_RECIPE)
    assert result.config["student"]["id"] != llama.config["student"]["id"]  # separate baseline caches


def test_a_student_built_from_the_teacher_has_no_other_family(cache: Path, tiny_run: dict[str, Any]) -> None:
    from kdatlas.runner import build_recipe

    with pytest.raises(ValueError, match="--student-family does not apply"):
        run_recipe(
            build_recipe("minima", {}),
            RunConfig(device="cpu", student_family="gpt2", **tiny_run),
            teacher_recipe=QUICK_RECIPE,
        )
