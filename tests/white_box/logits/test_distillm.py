"""DistiLLM: the recipe pairs the skew KL (α = 0.1) or skew reverse KL with the adaptive replay of
student outputs, with the official scripts' defaults. The replay schedule is tested with the other
data sources (tests/core/test_data_sources.py), the divergences in tests/losses/."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls import losses
from reference_impls.core.data_sources import AdaptiveStudentReplay
from reference_impls.core.logits_loss import WordLevelObjective
from reference_impls.white_box.logits.distillm import DIVERGENCES, distillm_recipe


def _tiny(seed: int = 0, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * scale
    teacher = torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[0, :2] = -100
    return student, teacher, labels


def test_defaults_are_the_official_scripts() -> None:
    recipe = distillm_recipe()
    assert recipe.method_id == "distillm"
    assert recipe.hyperparameters == {
        "divergence": "sfkl",
        "alpha": 0.1,
        "init_threshold": 0.0,
        "loss_eps": 0.1,
        "capacity": 1000,
        "temperature": 1.0,
    }
    assert recipe.loss == WordLevelObjective("distillm", losses.skew_forward_kl, {"alpha": 0.1})
    assert isinstance(recipe.data, AdaptiveStudentReplay)
    data = recipe.data
    assert (data.init_threshold, data.loss_eps, data.capacity, data.temperature) == (0.0, 0.1, 1000, 1.0)
    assert {"sfkl": losses.skew_forward_kl, "srkl": losses.skew_reverse_kl} == DIVERGENCES


def test_options_reach_the_data_source() -> None:
    data = distillm_recipe(init_threshold=0.3, loss_eps=0.2, capacity=5, temperature=0.8).data
    assert (data.init_threshold, data.loss_eps, data.capacity, data.temperature) == (0.3, 0.2, 5, 0.8)
    with pytest.raises(ValueError, match="divergence must be one of sfkl, srkl, got 'kl'"):
        distillm_recipe(divergence="kl")


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_skew_losses_match_the_mixture_formula_and_are_bounded(alpha: float) -> None:
    student, teacher, labels = _tiny(scale=8.0)  # far apart: plain KL would be large
    p, q = torch.softmax(teacher, -1), torch.softmax(student, -1)
    keep = labels != -100
    skew_forward = (p * (p / (alpha * p + (1 - alpha) * q)).log()).sum(-1)[keep].mean()
    skew_reverse = (q * (q / ((1 - alpha) * p + alpha * q)).log()).sum(-1)[keep].mean()
    sfkl = distillm_recipe(alpha=alpha).loss(student, teacher, labels)
    srkl = distillm_recipe(divergence="srkl", alpha=alpha).loss(student, teacher, labels)
    assert sfkl.item() == pytest.approx(skew_forward.item(), rel=1e-10)
    assert srkl.item() == pytest.approx(skew_reverse.item(), rel=1e-10)
    # The mixture bounds the log-ratio: both are at most −log α, unlike the plain KLs here.
    assert max(sfkl.item(), srkl.item()) <= -math.log(alpha)
    assert losses.forward_kl(student, teacher, labels).item() > -math.log(0.1)
