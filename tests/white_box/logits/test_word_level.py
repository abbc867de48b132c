"""Word-level KD: each registered divergence recipe pairs the dataset's responses with its
divergence and the defaults its entry cites; ToDi's recipe (moved from tests/losses/test_todi.py)
end to end. The divergences themselves are tested in tests/losses/."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from kdatlas.runner import build_recipe
from reference_impls import losses
from reference_impls.core.data_sources import DatasetResponses
from reference_impls.core.logits_loss import WordLevelObjective
from reference_impls.losses import todi
from reference_impls.registry import registered_methods
from reference_impls.run import RunConfig, run_recipe
from reference_impls.run.scoring import reported_metrics
from reference_impls.teachers.embedded import QUICK_RECIPE
from reference_impls.white_box.logits import word_level
from tests.losses.test_todi import make_inputs
from tests.support.metrics import expected_names

MODULE = "reference_impls.white_box.logits.word_level"
# method id -> (divergence, the defaults its entry cites)
EXPECTED = {
    "forward-kl": (losses.forward_kl, {"temperature": 1.0}),
    "reverse-kl": (losses.reverse_kl, {"temperature": 1.0}),
    "generalized-jsd": (losses.generalized_jsd, {"beta": 0.5, "temperature": 1.0}),
    "total-variation": (losses.total_variation, {"temperature": 1.0}),
    "skew-forward-kl": (losses.skew_forward_kl, {"alpha": 0.1, "temperature": 1.0}),
    "skew-reverse-kl": (losses.skew_reverse_kl, {"alpha": 0.1, "temperature": 1.0}),
    "adaptive-kl": (losses.adaptive_kl, {"mu": 0.5, "temperature": 1.0}),
    "todi": (losses.todi, {"temperature": 2.0}),
}


def _tiny(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 6, (2, 4), generator=g)
    labels[0, :2] = -100
    return student, teacher, labels


def test_every_recipe_of_the_module_is_one_divergence_of_the_loss_api() -> None:
    here = {m for m, r in registered_methods().items() if r.module == MODULE}
    assert here == set(EXPECTED)
    assert {id_: losses.DIVERGENCES[id_] for id_ in here} == {id_: f for id_, (f, _) in EXPECTED.items()}


@pytest.mark.parametrize("method_id", sorted(EXPECTED))
def test_recipe_is_its_divergence_on_the_datasets_responses(method_id: str) -> None:
    divergence, defaults = EXPECTED[method_id]
    recipe = registered_methods()[method_id].build_recipe()
    assert recipe.method_id == method_id and isinstance(recipe.data, DatasetResponses)
    assert recipe.hyperparameters == defaults == registered_methods()[method_id].defaults()
    assert recipe.loss == WordLevelObjective(method_id, divergence, defaults)
    student, teacher, labels = _tiny()
    torch.testing.assert_close(
        recipe.loss(student, teacher, labels), divergence(student, teacher, labels, **defaults)
    )
    with pytest.raises(ValueError, match=f"{method_id} needs the teacher's logits"):
        recipe.loss(student, None, labels)


def test_forward_kl_recipe_is_the_mean_token_kl_at_its_temperature() -> None:
    student, teacher, labels = _tiny(1)
    got = word_level.forward_kl_recipe(temperature=2.0).loss(student, teacher, labels)
    log_p, log_q = torch.log_softmax(teacher / 2.0, -1), torch.log_softmax(student / 2.0, -1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    assert got.item() == pytest.approx(per_token[labels != -100].mean().item(), rel=1e-12)


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.getbasetemp() / "todi-cache"
    monkeypatch.setenv("KDATLAS_CACHE", str(root))
    return root


def test_recipe_defaults_and_objective() -> None:
    assert registered_methods()["todi"].defaults() == {"temperature": 2.0}
    recipe = build_recipe("todi", {"temperature": "1.5"})
    assert recipe.hyperparameters == {"temperature": 1.5}
    student, teacher, labels = make_inputs(seed=13)
    torch.testing.assert_close(
        recipe.loss(student, teacher, labels), todi(student, teacher, labels, temperature=1.5)
    )


def test_recipe_runs_end_to_end(cache: Path, tiny_run: dict[str, Any]) -> None:
    recipe = build_recipe("todi", {})
    result = run_recipe(recipe, RunConfig(device="cpu", **tiny_run), teacher_recipe=QUICK_RECIPE)
    assert set(result.metrics) == {"teacher", "baseline", "distilled"}
    for role, metrics in result.metrics.items():
        assert set(metrics) == expected_names(metrics, reported_metrics(suite=True)), role
    assert len(result.curves["distilled"]) == tiny_run["steps"]
    assert all(math.isfinite(loss) for loss in result.curves["distilled"])
    assert result.config["hyperparameters"] == {"temperature": 2.0}
