"""The shipped embedded teachers: they belong to the current recipes, load without training, are
checked against their cards, and a rebuild compares itself with them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from reference_impls.teachers import catalog, embedded
from reference_impls.teachers.embedded import QUICK_RECIPE, TeacherRecipe


@pytest.mark.parametrize("name", sorted(catalog.TEACHERS))
def test_the_shipped_weights_belong_to_the_current_recipe(name: str) -> None:
    """Fails when a recipe, model config, vocabulary or training data changed without re-shipping:
    run `kdatlas teachers build NAME --ship`, then regenerate every results file."""
    teacher = catalog.TEACHERS[name]
    entry = embedded.SHIPPED_ROOT / teacher.key
    assert embedded.is_complete(entry), f"no shipped '{name}' teacher for key {teacher.key}"
    card = catalog.read_card(entry)
    assert card["key"] == teacher.key and card["teacher"] == name
    embedded.check_weights(entry)  # the weights are the ones the card names
    assert catalog.stale_entries() == []


def test_a_first_run_on_a_fresh_machine_trains_no_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDATLAS_CACHE", str(tmp_path))  # an empty cache

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the shipped teacher should have been loaded")

    monkeypatch.setattr(embedded, "train_teacher", no_training)
    model, tokenizer = embedded.load_or_train_teacher("cpu", progress=False)
    assert not model.training and len(tokenizer) == model.config.vocab_size
    assert not (tmp_path / "teachers").exists()  # read from the package, nothing copied


def test_damaged_shipped_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "shipped"
    key = embedded.teacher_dir().name
    shutil.copytree(embedded.SHIPPED_ROOT / key, root / key)
    # What a checkout without Git LFS, or a truncated download, leaves behind.
    (root / key / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")
    monkeypatch.setattr(embedded, "SHIPPED_ROOT", root)
    with pytest.raises(ValueError, match=r"do not match their card.*kdatlas teachers build --ship"):
        embedded.load_or_train_teacher("cpu", progress=False)


def test_a_rebuild_is_compared_with_the_shipped_entry_and_can_replace_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a few-step recipe standing in for the real one (the real rebuild takes minutes)."""
    monkeypatch.setenv("KDATLAS_CACHE", str(tmp_path / "cache"))
    quick = catalog.EmbeddedTeacher(
        "strings",
        "test",
        lambda: embedded.teacher_dir(QUICK_RECIPE),
        lambda device, progress: embedded.build_teacher(QUICK_RECIPE, device, progress),
        lambda: ["copy: abc =", "rev: abc ="],
    )
    root = tmp_path / "shipped"
    rebuilt, comparison = catalog.rebuild(quick, progress=False, root=root)
    assert comparison == {"shipped": False, "rebuilt_card": rebuilt[2]}
    catalog.ship(quick, rebuilt, root=root)
    again, comparison = catalog.rebuild(quick, progress=False, root=root)
    assert comparison["identical_weights"] is True  # same recipe, machine and thread count
    assert comparison["greedy_agreement"] == 1.0 and comparison["max_abs_weight_difference"] == 0.0
    # A rebuild that came out differently is reported so.
    model, tokenizer, card = again
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    different = catalog.compare((model, tokenizer, card), root / quick.key, ["copy: abc ="])
    assert different["identical_weights"] is False and different["max_abs_weight_difference"] == pytest.approx(0.5)
    shipped = json.loads((root / quick.key / "teacher_card.json").read_text())
    assert shipped["built_with"]["torch"] == torch.__version__ and shipped["recipe"]["steps"] == QUICK_RECIPE.steps


def test_a_recipe_without_a_shipped_entry_is_trained_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDATLAS_CACHE", str(tmp_path))
    assert embedded.teacher_dir(QUICK_RECIPE).name != embedded.teacher_dir(TeacherRecipe()).name
    embedded.load_or_train_teacher("cpu", progress=False, recipe=QUICK_RECIPE)
    assert embedded.is_complete(embedded.teacher_dir(QUICK_RECIPE))


def test_teachers_list_reports_every_shipped_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from kdatlas.cli import app

    monkeypatch.setenv("KDATLAS_CACHE", str(tmp_path))
    result = CliRunner().invoke(app, ["teachers", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert {row["name"]: (row["shipped"], row["cached"]) for row in listed["teachers"]} == {
        "strings": (True, False),
        "instructions": (True, False),
        "encoder-mlm": (True, False),
        "encoder-classifier": (True, False),
    }
    assert listed["stale_shipped_entries"] == []
    assert listed["teachers"][0]["card"]["test_exact_match"] > 0.7
