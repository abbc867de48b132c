"""Every implemented method end to end on the embedded defaults (tiny budgets: mechanics).

The quality claim — the distilled student ends closer to the teacher than the baseline with the
real budget — is checked by the slow test at the end and measured in benchmarks/run_times.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from kdatlas.runner import RunError, build_recipe, run_method
from kdatlas.taxonomy import load_taxonomy
from reference_impls.common.harness import METRIC_NAMES, RunConfig, run_recipe
from reference_impls.common.teacher import QUICK_RECIPE
from reference_impls.registry import registered_methods

REPO = Path(__file__).resolve().parents[1]
USER_CACHE = os.environ.get("KDATLAS_CACHE")  # before the autouse fixture replaces it
IMPLEMENTED = sorted(registered_methods())


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    # One cache for the module: the quick teacher and the baseline are trained once.
    root = tmp_path_factory.getbasetemp() / "methods-cache"
    monkeypatch.setenv("KDATLAS_CACHE", str(root))
    return root


def test_every_implemented_entry_is_registered_and_vice_versa() -> None:
    taxonomy, problems = load_taxonomy(REPO)
    assert not problems
    implemented = {e.id for e in taxonomy.entries.values() if e.status.value == "implemented"}
    assert implemented == set(IMPLEMENTED)


@pytest.mark.parametrize("method_id", IMPLEMENTED)
def test_method_runs_end_to_end(method_id: str, tiny_run: dict[str, Any]) -> None:
    recipe = build_recipe(method_id, {})
    assert recipe.method_id == method_id
    result = run_recipe(recipe, RunConfig(device="cpu", **tiny_run), teacher_recipe=QUICK_RECIPE)
    assert set(result.metrics) == {"teacher", "baseline", "distilled"}
    for role, metrics in result.metrics.items():
        assert set(metrics) == set(METRIC_NAMES), role
    assert len(result.curves["distilled"]) == 2
    assert all(loss == loss for loss in result.curves["distilled"]), "NaN loss"
    assert result.config["hyperparameters"] == registered_methods()[method_id].defaults()


def test_overrides_reach_the_recipe() -> None:
    recipe = build_recipe("generalized-jsd", {"beta": "0.9", "temperature": "2"})
    assert recipe.hyperparameters == {"beta": 0.9, "temperature": 2.0}


@pytest.mark.parametrize(
    ("method_id", "override", "fragment"),
    [
        ("generalized-jsd", {"beta": "1.5"}, "beta"),
        ("vanilla-kd", {"temperature": "0"}, "temperature"),
        ("seqkd", {"decoding": "beam"}, "greedy"),
    ],
)
def test_bad_hyperparameters_fail_before_any_training(
    method_id: str, override: dict[str, str], fragment: str
) -> None:
    with pytest.raises(RunError, match=fragment):
        build_recipe(method_id, override)


def test_run_method_writes_the_run_directory(tmp_path: Path, tiny_run: dict[str, Any]) -> None:
    out = tmp_path / "run"
    console = Console(record=True, width=120)
    config = RunConfig(device="cpu", **tiny_run)
    run_method("forward-kl", config, out=out, console=console, teacher_recipe=QUICK_RECIPE)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "baseline", "distilled"}
    assert set(metrics["distilled"]) == set(METRIC_NAMES)
    config = json.loads((out / "config.json").read_text())
    assert config["method_id"] == "forward-kl" and config["hyperparameters"] == {"temperature": 1.0}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = console.export_text()
    assert "token KL(teacher‖student)" in shown and "distilled student" in shown
    assert "closer to the teacher" in shown  # the verdict sentence


@pytest.mark.slow
def test_default_budget_brings_the_student_closer_to_the_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim every method page makes, with the real embedded teacher and default budget.

    Uses the user's cache (``$KDATLAS_CACHE`` or ``~/.cache/kdatlas``) like ``kdatlas run``: the
    first run on a machine trains the teacher (under 2 minutes), later runs reuse it.
    """
    if USER_CACHE is None:
        monkeypatch.delenv("KDATLAS_CACHE")
    else:
        monkeypatch.setenv("KDATLAS_CACHE", USER_CACHE)
    result = run_recipe(build_recipe("forward-kl", {}), RunConfig(device="cpu", progress=False))
    teacher, baseline, distilled = (result.metrics[role] for role in ("teacher", "baseline", "distilled"))
    assert distilled["token_kl_to_teacher"] < baseline["token_kl_to_teacher"]
    assert teacher["exact_match"] >= 0.7  # the tiny teacher is good, not perfect (see teacher.py)


def test_baseline_and_distilled_share_start_data_and_budget(tiny_run: dict[str, Any]) -> None:
    """A 'distillation' whose objective is the baseline's cross-entropy reproduces the baseline
    exactly: both students start from the same warm start and see the same batches."""
    from reference_impls.common.data_sources import DatasetResponses
    from reference_impls.common.harness import Recipe
    from reference_impls.common.training import cross_entropy_objective

    recipe = Recipe("plain-ce", cross_entropy_objective, DatasetResponses(), uses_teacher_logits=False)
    config = RunConfig(device="cpu", **{**tiny_run, "steps": 3, "sft_steps": 3})
    result = run_recipe(recipe, config, teacher_recipe=QUICK_RECIPE)
    assert result.curves["distilled"] == pytest.approx(result.curves["baseline"])
    assert result.metrics["distilled"] == pytest.approx(result.metrics["baseline"])


@pytest.mark.parametrize(
    ("distilled", "expected"),
    [
        ((0.5, 0.5, 0.5), "is closer to the teacher than the baseline (forward KL 0.5000 vs 1.0000"),
        (
            (1.5, 0.5, 1.5),
            "closer to the teacher by reverse KL 0.5000 vs 1.0000, but not by forward KL 1.5000",
        ),
        ((1.5, 1.5, 1.5), "is NOT closer"),
    ],
)
def test_verdict_reports_every_distance_honestly(
    distilled: tuple[float, float, float], expected: str
) -> None:
    from kdatlas.runner import verdict

    def row(values: tuple[float, float, float]) -> dict[str, float]:
        names = ("token_kl_to_teacher", "token_reverse_kl_to_teacher", "token_tvd_to_teacher")
        return dict(zip(names, values, strict=True))

    assert expected in verdict({"baseline": row((1.0, 1.0, 1.0)), "distilled": row(distilled)})
