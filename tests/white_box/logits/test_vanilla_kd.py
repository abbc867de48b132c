"""Vanilla KD (Hinton et al.): the recipe is (1 − α)·CE + α·T²·KL at T on the dataset's responses,
with T = 2 and α = 0.5. The loss function itself is tested in tests/losses/test_divergences.py."""

from __future__ import annotations

import pytest
import torch

from reference_impls.core.data_sources import DatasetResponses
from reference_impls.white_box.logits.vanilla_kd import vanilla_kd_recipe


def _tiny(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[0, :2] = -100
    return student, teacher, labels


def _direct(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float, alpha: float
) -> float:
    keep = labels != -100
    log_q = torch.log_softmax(student, -1)
    ce = -log_q.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)[keep].mean()
    log_p_t, log_q_t = torch.log_softmax(teacher / t, -1), torch.log_softmax(student / t, -1)
    kl = (log_p_t.exp() * (log_p_t - log_q_t)).sum(-1)[keep].mean()
    return ((1 - alpha) * ce + alpha * t**2 * kl).item()


def test_defaults_and_data() -> None:
    recipe = vanilla_kd_recipe()
    assert recipe.method_id == "vanilla-kd"
    assert recipe.hyperparameters == {"temperature": 2.0, "alpha": 0.5}
    assert isinstance(recipe.data, DatasetResponses)


@pytest.mark.parametrize(("temperature", "alpha"), [(2.0, 0.5), (4.0, 0.9), (1.0, 0.0)])
def test_loss_is_hard_ce_plus_t_squared_soft_kl(temperature: float, alpha: float) -> None:
    student, teacher, labels = _tiny()
    loss = vanilla_kd_recipe(temperature=temperature, alpha=alpha).loss(student, teacher, labels)
    assert loss.item() == pytest.approx(_direct(student, teacher, labels, temperature, alpha), rel=1e-10)


def test_soft_term_gradient_keeps_its_scale_across_temperatures() -> None:
    # d/dz_s of T²·KL(p_T‖q_T) is T·(q_T − p_T); for large T and zero-mean logits,
    # q_T − p_T ≈ (z_s − z_t)/(V·T), so the gradient tends to (z_s − z_t)/V whatever T is
    # (without T² it would vanish as 1/T²: the reason for the factor, Hinton et al. §2).
    student, teacher, labels = _tiny(1)
    student, teacher = student - student.mean(-1, keepdim=True), teacher - teacher.mean(-1, keepdim=True)
    norms = []
    for temperature in (10.0, 100.0):
        s = student.clone().requires_grad_(True)
        vanilla_kd_recipe(temperature=temperature, alpha=1.0).loss(s, teacher, labels).backward()
        norms.append(s.grad.norm().item())
    assert norms[1] == pytest.approx(norms[0], rel=0.05)


def test_needs_the_teachers_logits() -> None:
    student, _, labels = _tiny()
    with pytest.raises(ValueError, match="vanilla-kd needs the teacher's logits"):
        vanilla_kd_recipe().loss(student, None, labels)
