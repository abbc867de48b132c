"""GKD: the recipe pairs the generalized JSD_β (at T = 1) with the λ mixture of student samples and
dataset responses, with TRL's ``GKDConfig`` defaults. The mixture's statistics are tested with the
other data sources (tests/core/test_data_sources.py), the divergence in tests/losses/."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls import losses
from reference_impls.core.data_sources import MixedStudentData
from reference_impls.core.logits_loss import WordLevelObjective
from reference_impls.white_box.logits.gkd import gkd_recipe


def _tiny(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[1, :3] = -100
    return student, teacher, labels


def _jsd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, beta: float) -> float:
    """β KL(p‖m) + (1 − β) KL(q‖m), m = βp + (1 − β)q, averaged over the labelled tokens."""
    p, q = torch.softmax(teacher, -1), torch.softmax(student, -1)
    m = beta * p + (1 - beta) * q
    per_token = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    return per_token[labels != -100].mean().item()


def test_defaults_are_trls_gkdconfig() -> None:
    recipe = gkd_recipe()
    assert recipe.method_id == "gkd"
    assert recipe.hyperparameters == {"lam": 0.5, "beta": 0.5, "temperature": 0.9, "seq_kd": False}
    assert isinstance(recipe.data, MixedStudentData)
    assert (recipe.data.lam, recipe.data.temperature, recipe.data.seq_kd) == (0.5, 0.9, False)
    # The sampling temperature is the data source's; the loss is at T = 1 (no temperature bound).
    assert recipe.loss == WordLevelObjective("gkd", losses.generalized_jsd, {"beta": 0.5})


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_loss_is_the_generalized_jsd_with_its_beta(beta: float) -> None:
    student, teacher, labels = _tiny()
    loss = gkd_recipe(beta=beta).loss(student, teacher, labels)
    assert loss.item() == pytest.approx(_jsd(student, teacher, labels, beta), rel=1e-10)
    binary_entropy = -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta))
    assert 0 < loss.item() <= binary_entropy  # the generalized JSD's bound, in nats


def test_options_reach_the_data_source() -> None:
    recipe = gkd_recipe(lam=1.0, temperature=0.7, seq_kd=True)
    assert (recipe.data.lam, recipe.data.temperature, recipe.data.seq_kd) == (1.0, 0.7, True)
    assert recipe.hyperparameters["lam"] == 1.0
    with pytest.raises(ValueError, match=r"lam \(λ\) must be in \[0, 1\]"):
        gkd_recipe(lam=1.5)
    student, _, labels = _tiny()
    with pytest.raises(ValueError, match="gkd needs the teacher's logits"):
        recipe.loss(student, None, labels)
