"""Every implemented method end to end on the embedded defaults (tiny budgets: mechanics).

The quality claim — the distilled student ends closer to the teacher than the baseline with the
real budget — is checked by the slow test at the end and measured in benchmarks/run_times.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from kdatlas.runner import RunError, build_recipe, run_method
from kdatlas.taxonomy import load_taxonomy
from reference_impls.common.harness import METRIC_NAMES, RunConfig, run_recipe
from reference_impls.common.teacher import QUICK_RECIPE
from reference_impls.registry import registered_methods

REPO = Path(__file__).resolve().parents[1]
TINY = {"steps": 2, "eval_size": 14, "train_size": 32, "batch_size": 8, "max_new_tokens": 8, "progress": False}
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
def test_method_runs_end_to_end(method_id: str) -> None:
    recipe = build_recipe(method_id, {})
    assert recipe.method_id == method_id
    result = run_recipe(recipe, RunConfig(device="cpu", **TINY), teacher_recipe=QUICK_RECIPE)
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
    [("generalized-jsd", {"beta": "1.5"}, "beta"), ("vanilla-kd", {"temperature": "0"}, "temperature"), ("seqkd", {"decoding": "beam"}, "greedy")],
)
def test_bad_hyperparameters_fail_before_any_training(method_id: str, override: dict[str, str], fragment: str) -> None:
    with pytest.raises(RunError, match=fragment):
        build_recipe(method_id, override)


def test_run_method_writes_the_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    console = Console(record=True, width=120)
    run_method("forward-kl", device="cpu", steps=2, out=out, progress=False, console=console, teacher_recipe=QUICK_RECIPE)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "baseline", "distilled"}
    assert set(metrics["distilled"]) == set(METRIC_NAMES)
    config = json.loads((out / "config.json").read_text())
    assert config["method_id"] == "forward-kl" and config["hyperparameters"] == {"temperature": 1.0}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = console.export_text()
    assert "token KL to teacher" in shown and "distilled student" in shown
