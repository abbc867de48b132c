"""Tests for `reference_impls.white_box.logits.minillm`: hand-computed 3-token cases, agreement with direct float64
formulas and with an independent step-by-step transcription of the official LMOps algorithm,
gradients, masking edge cases and input errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from reference_impls.white_box.logits.minillm import (
    MiniLLMLoss,
    importance_weights,
    minillm_loss,
    normalized_returns,
    ppo_clipped_pg_loss,
    pretrain_loss,
    single_step_loss,
    token_rewards,
    whiten_advantages,
)

LN2 = math.log(2.0)
F64 = torch.float64


# --- the hand-computed 3-token sequence ------------------------------------------------------------
# Teacher p(y_t) = 0.5, 0.25, 0.8; student at sampling time q_old(y_t) = 0.25, 0.5, 0.4.
# r_t = log p - log q = ln2, -ln2, ln2.


def _three_tokens() -> tuple[Tensor, Tensor, Tensor]:
    teacher = torch.tensor([[0.5, 0.25, 0.8]], dtype=F64).log()
    old = torch.tensor([[0.25, 0.5, 0.4]], dtype=F64).log()
    return teacher, old, torch.ones(1, 3, dtype=torch.bool)


def test_rewards_by_hand() -> None:
    teacher, old, mask = _three_tokens()
    raw = token_rewards(teacher, old, mask, reward_scaling=None, reward_clip=None)
    torch.testing.assert_close(raw, torch.tensor([[LN2, -LN2, LN2]], dtype=F64))
    # Scaling 0.5 doubles them; then the clip at 1 bites (2 ln2 = 1.386).
    scaled = token_rewards(teacher, old, mask, reward_scaling=0.5, reward_clip=None)
    torch.testing.assert_close(scaled, 2 * raw)
    clipped = token_rewards(teacher, old, mask, reward_scaling=0.5, reward_clip=1.0)
    torch.testing.assert_close(clipped, torch.tensor([[1.0, -1.0, 1.0]], dtype=F64))
    # Defaults 0.5 / 100: scaling only.
    torch.testing.assert_close(token_rewards(teacher, old, mask), 2 * raw)


def test_returns_by_hand_from_t_and_from_t_plus_1() -> None:
    rewards = torch.tensor([[LN2, -LN2, LN2]], dtype=F64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    # From t (official): sums ln2 + .5(-ln2 + .5 ln2), -ln2 + .5 ln2, ln2 over 3, 2, 1 tokens.
    official = normalized_returns(rewards, mask, gamma=0.5)
    torch.testing.assert_close(official, torch.tensor([[0.25 * LN2, -0.25 * LN2, LN2]], dtype=F64))
    # From t+1 (paper): (-ln2 + .5 ln2) / 2, ln2 / 1, nothing left -> 0.
    paper = normalized_returns(rewards, mask, gamma=0.5, include_current=False)
    torch.testing.assert_close(paper, torch.tensor([[-0.25 * LN2, LN2, 0.0]], dtype=F64))
    # Unnormalised and discount-normalised variants.
    plain = normalized_returns(rewards, mask, gamma=0.5, normalization="none")
    torch.testing.assert_close(plain, torch.tensor([[0.75 * LN2, -0.5 * LN2, LN2]], dtype=F64))
    disc = normalized_returns(rewards, mask, gamma=0.5, normalization="discounted")
    torch.testing.assert_close(disc, torch.tensor([[0.75 * LN2 / 1.75, -0.5 * LN2 / 1.5, LN2]], dtype=F64))


def test_importance_weights_by_hand() -> None:
    teacher, old, mask = _three_tokens()
    # q / (0.8 q + 0.2 p): 0.25/0.3, 0.5/0.45, 0.4/0.48.
    w = importance_weights(old, teacher, mask, teacher_mix_alpha=0.2)
    torch.testing.assert_close(w, torch.tensor([[5 / 6, 10 / 9, 5 / 6]], dtype=F64))
    torch.testing.assert_close(
        importance_weights(old, teacher, mask, teacher_mix_alpha=0.0), torch.ones(1, 3, dtype=F64)
    )
    torch.testing.assert_close(
        importance_weights(old, teacher, mask, teacher_mix_alpha=1.0), (old - teacher).exp()
    )


def test_pg_loss_and_gradient_by_hand() -> None:
    advantages = torch.tensor([[0.25 * LN2, -0.25 * LN2, LN2]], dtype=F64)
    _, old, mask = _three_tokens()
    weights = torch.tensor([[5 / 6, 10 / 9, 5 / 6]], dtype=F64)
    # Token 1 moved up by x1.5: ratio 1.5 * 5/6 = 1.25 > 1.2 with A > 0, so the clipped branch wins.
    current = (old + torch.tensor([[math.log(1.5), 0.0, 0.0]], dtype=F64)).requires_grad_(True)
    loss = ppo_clipped_pg_loss(current, old, advantages, mask, weights=weights, clip_range=0.2)
    a1, a2, a3 = advantages[0].tolist()
    expected = (-a1 * 1.2 - a2 * 10 / 9 - a3 * 5 / 6) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, current)
    # d/dlog q of -A * rho is -A * rho; the clipped token gets none.
    torch.testing.assert_close(grad, torch.tensor([[0.0, -a2 * (10 / 9) / 3, -a3 * (5 / 6) / 3]], dtype=F64))


def test_pg_clip_is_pessimistic_for_negative_advantage() -> None:
    # A < 0 and rho = 1.5 > 1.2: max(-A rho, -A 1.2) = -A rho, the unclipped branch keeps its gradient.
    old = torch.zeros(1, 1, dtype=F64)
    current = torch.full((1, 1), math.log(1.5), dtype=F64, requires_grad=True)
    adv = torch.full((1, 1), -2.0, dtype=F64)
    loss = ppo_clipped_pg_loss(current, old, adv, torch.ones(1, 1, dtype=torch.bool))
    assert loss.item() == pytest.approx(3.0)
    (grad,) = torch.autograd.grad(loss, current)
    assert grad.item() == pytest.approx(3.0)


# --- direct formulas and the official algorithm ----------------------------------------------------


def _direct_returns(rewards: Tensor, mask: Tensor, gamma: float, include_current: bool, norm: str) -> Tensor:
    out = torch.zeros_like(rewards, dtype=F64)
    b, t_len = rewards.shape
    for b_i in range(b):
        for t in range(t_len):
            if not mask[b_i, t]:
                continue
            start = t if include_current else t + 1
            total = sum(
                gamma ** (i - start) * float(rewards[b_i, i]) * bool(mask[b_i, i])
                for i in range(start, t_len)
            )
            if norm == "count":
                denominator = sum(bool(mask[b_i, i]) for i in range(start, t_len))
            elif norm == "discounted":
                denominator = sum(gamma ** (i - start) * bool(mask[b_i, i]) for i in range(start, t_len))
            else:
                denominator = 1.0
            out[b_i, t] = total / denominator if denominator > 0 else 0.0
    return out


@pytest.mark.parametrize("include_current", [True, False])
@pytest.mark.parametrize("norm", ["count", "discounted", "none"])
@pytest.mark.parametrize("gamma", [0.0, 0.95, 1.0])
def test_returns_match_direct_formula(include_current: bool, norm: str, gamma: float) -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(4, 7, generator=g, dtype=F64)
    lengths = torch.tensor([7, 3, 1, 0])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    got = normalized_returns(rewards, mask, gamma=gamma, include_current=include_current, normalization=norm)  # type: ignore[arg-type]
    torch.testing.assert_close(got, _direct_returns(rewards, mask, gamma, include_current, norm))


def test_gamma_zero_special_cases() -> None:
    rewards = torch.tensor([[1.0, 2.0, 4.0, 9.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, False]])
    # Official count normaliser: r_t / (valid tokens from t on). TRL's discounted one: r_t.
    torch.testing.assert_close(
        normalized_returns(rewards, mask, gamma=0.0), torch.tensor([[1 / 3, 2 / 2, 4 / 1, 0.0]], dtype=F64)
    )
    torch.testing.assert_close(
        normalized_returns(rewards, mask, gamma=0.0, normalization="discounted"),
        torch.tensor([[1.0, 2.0, 4.0, 0.0]], dtype=F64),
    )


@pytest.mark.parametrize("include_padding", [True, False])
def test_whitening_matches_direct_formula(include_padding: bool) -> None:
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(3, 5, generator=g, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    values = [float(adv[i, j]) if mask[i, j] else 0.0 for i in range(3) for j in range(5)]
    if not include_padding:
        values = [float(adv[i, j]) for i in range(3) for j in range(5) if mask[i, j]]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    expected = torch.where(mask, (adv - mean) / math.sqrt(var + 1e-8), 0.0)
    torch.testing.assert_close(whiten_advantages(adv, mask, include_padding=include_padding), expected)


def test_single_step_equals_float64_reverse_kl() -> None:
    g = torch.Generator().manual_seed(2)
    student = torch.randn(2, 4, 6, generator=g, dtype=F64, requires_grad=True)
    teacher = torch.randn(2, 4, 6, generator=g, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    got = single_step_loss(student, teacher, mask, temperature=2.0)
    q = torch.softmax(student.detach() / 2.0, -1)
    p = torch.softmax(teacher / 2.0, -1)
    per_position = (q * (q.log() - p.log())).sum(-1)
    expected = per_position[mask].sum() / mask.sum()
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.autograd.gradcheck(lambda s: single_step_loss(s, teacher, mask), (student,))


def test_pretrain_loss_direct() -> None:
    g = torch.Generator().manual_seed(3)
    student = torch.randn(2, 3, 5, generator=g, dtype=F64)
    teacher = torch.randn(2, 3, 5, generator=g, dtype=F64)
    labels = torch.tensor([[1, 4, -100], [0, -100, -100]])
    valid = labels != -100
    log_q = torch.log_softmax(student, -1)
    p = torch.softmax(teacher, -1)
    ce = -log_q.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)[valid].mean()
    soft_ce = -(p * log_q).sum(-1)[valid].mean()
    assert pretrain_loss(student, labels, teacher, kd_ratio=0.5).item() == pytest.approx(
        (0.5 * ce + 0.5 * soft_ce).item()
    )
    assert pretrain_loss(student, labels).item() == pytest.approx(ce.item())
    assert pretrain_loss(student, labels, teacher, kd_ratio=0.0).item() == pytest.approx(ce.item())


def _official_step(
    student_logits: Tensor,
    teacher_logits: Tensor,
    ids: Tensor,
    mask: Tensor,
    old_lp: Tensor,
    alpha: float,
    gamma: float,
    scaling: float,
    clip_reward: float,
    eps: float,
) -> Tensor:
    """The LMOps rollout + `ppo_loss` steps written out independently (no kdatlas code)."""
    m = mask.to(F64)
    t_lp = torch.log_softmax(teacher_logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * m
    s_lp = torch.log_softmax(student_logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * m
    old_lp = old_lp * m
    w = (old_lp - torch.log((1 - alpha) * old_lp.exp() + alpha * t_lp.exp())).exp()
    rewards = ((t_lp - old_lp) / scaling).clamp(-clip_reward, clip_reward)
    lens = m - torch.cumsum(m, -1) + torch.cumsum(m, -1)[:, -1:]
    lens = lens.masked_fill(lens == 0, 1)
    acc, rev = torch.zeros(ids.shape[0], dtype=F64), []
    for t in reversed(range(ids.shape[1])):
        acc = rewards[:, t] + gamma * acc
        rev.append(acc)
    adv = torch.stack(rev[::-1], 1) / lens
    var, mean = torch.var_mean(adv)
    adv = (adv - mean) * torch.rsqrt(var + 1e-8)
    ratio = ((s_lp - old_lp) * m).exp() * w
    pg = (torch.max(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)) * m).sum() / m.sum()
    q = torch.softmax(student_logits, -1)
    reg = (
        (q * (torch.log_softmax(student_logits, -1) - torch.log_softmax(teacher_logits, -1))).sum(-1) * m
    ).sum() / m.sum()
    return pg + reg


def _rollout_batch(seed: int = 4) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, t_len, v = 3, 5, 7
    student = torch.randn(b, t_len, v, generator=g, dtype=F64)
    mask = torch.arange(t_len)[None, :] < torch.tensor([5, 2, 1])[:, None]
    ids = torch.randint(0, v, (b, t_len), generator=g)
    # The old policy is a nearby earlier student, so ratios straddle the clip range.
    old_logits = student + 0.3 * torch.randn(b, t_len, v, generator=g, dtype=F64)
    old_lp = torch.log_softmax(old_logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return {
        "student_logits": student,
        "teacher_logits": torch.randn(b, t_len, v, generator=g, dtype=F64),
        "response_ids": ids,
        "response_mask": mask,
        "old_logprobs": torch.where(mask, old_lp, 0.0),
    }


def test_minillm_loss_matches_official_algorithm() -> None:
    batch = _rollout_batch()
    student = batch["student_logits"].clone().requires_grad_(True)
    ours = minillm_loss(**{**batch, "student_logits": student}, reward_clip=1.0)
    student_ref = batch["student_logits"].clone().requires_grad_(True)
    ref = _official_step(
        student_ref,
        batch["teacher_logits"],
        batch["response_ids"],
        batch["response_mask"],
        batch["old_logprobs"],
        alpha=0.2,
        gamma=0.95,
        scaling=0.5,
        clip_reward=1.0,
        eps=0.2,
    )
    assert isinstance(ours, MiniLLMLoss)
    assert ours.total.item() == pytest.approx(ref.item(), rel=1e-10)
    (g_ours,) = torch.autograd.grad(ours.total, student)
    (g_ref,) = torch.autograd.grad(ref, student_ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_minillm_loss_parts_and_lm_term() -> None:
    batch = _rollout_batch(5)
    g = torch.Generator().manual_seed(6)
    lm_student = torch.randn(2, 4, 7, generator=g, dtype=F64)
    lm_teacher = torch.randn(2, 4, 7, generator=g, dtype=F64)
    lm_labels = torch.tensor([[1, 2, 3, -100], [4, 5, -100, -100]])
    out = minillm_loss(
        **batch, lm_student_logits=lm_student, lm_labels=lm_labels, lm_teacher_logits=lm_teacher, lm_coef=0.7
    )
    torch.testing.assert_close(out.total, out.policy_gradient + out.single_step + 0.7 * out.pretrain)
    torch.testing.assert_close(out.pretrain, pretrain_loss(lm_student, lm_labels, lm_teacher, kd_ratio=0.5))
    torch.testing.assert_close(
        out.single_step,
        single_step_loss(batch["student_logits"], batch["teacher_logits"], batch["response_mask"]),
    )
    no_single = minillm_loss(**batch, single_step=False)
    assert no_single.single_step.item() == 0.0
    torch.testing.assert_close(no_single.total, no_single.policy_gradient)


def test_stored_rewards_and_weights_equal_recomputed() -> None:
    batch = _rollout_batch(7)
    mask = batch["response_mask"]
    t_lp = (
        torch.log_softmax(batch["teacher_logits"], -1)
        .gather(-1, batch["response_ids"].unsqueeze(-1))
        .squeeze(-1)
    )
    rewards = token_rewards(t_lp, batch["old_logprobs"], mask)
    weights = importance_weights(batch["old_logprobs"], t_lp, mask)
    stored = minillm_loss(**batch, rewards=rewards, weights=weights)
    torch.testing.assert_close(stored.total, minillm_loss(**batch).total)


def test_special_cases_alpha_zero_and_no_clip() -> None:
    batch = _rollout_batch(8)
    mask = batch["response_mask"]
    unit = importance_weights(batch["old_logprobs"], batch["old_logprobs"] - 1.0, mask, teacher_mix_alpha=0.0)
    assert torch.equal(unit, torch.ones_like(unit))
    # No clip equals the plain importance-weighted REINFORCE loss, and a huge clip equals no clip.
    g = torch.Generator().manual_seed(9)
    current, old, adv = (torch.randn(3, 5, generator=g, dtype=F64) for _ in range(3))
    plain = -(adv * (current - old).exp())[mask].sum() / mask.sum()
    torch.testing.assert_close(ppo_clipped_pg_loss(current, old, adv, mask, clip_range=None), plain)
    torch.testing.assert_close(ppo_clipped_pg_loss(current, old, adv, mask, clip_range=1e6), plain)


# --- masking ---------------------------------------------------------------------------------------


def test_padding_after_eos_is_ignored() -> None:
    batch = _rollout_batch(10)
    mask = batch["response_mask"]
    garbage = {
        "student_logits": torch.where(mask[..., None], batch["student_logits"], 123.0),
        "teacher_logits": torch.where(mask[..., None], batch["teacher_logits"], -55.0),
        "response_ids": torch.where(mask, batch["response_ids"], 3),
        "old_logprobs": torch.where(mask, batch["old_logprobs"], float("nan")),
    }
    # Padded entries are zeroed before any statistic (whitening counts them as zeros, as LMOps does).
    a = minillm_loss(**batch)
    b = minillm_loss(**{**batch, **garbage})
    torch.testing.assert_close(a.total, b.total)


def test_eos_at_step_one() -> None:
    teacher = torch.tensor([[0.5, 0.1, 0.1]], dtype=F64).log()
    old = torch.tensor([[0.25, 0.9, 0.9]], dtype=F64).log()
    mask = torch.tensor([[True, False, False]])
    rewards = token_rewards(teacher, old, mask, reward_scaling=None)
    torch.testing.assert_close(rewards, torch.tensor([[LN2, 0.0, 0.0]], dtype=F64))
    torch.testing.assert_close(normalized_returns(rewards, mask), torch.tensor([[LN2, 0.0, 0.0]], dtype=F64))
    torch.testing.assert_close(
        normalized_returns(rewards, mask, include_current=False), torch.zeros(1, 3, dtype=F64)
    )
    w = importance_weights(old, teacher, mask)
    torch.testing.assert_close(w, torch.tensor([[0.25 / 0.3, 1.0, 1.0]], dtype=F64))


def test_all_masked_batch_gives_zero_with_finite_gradients() -> None:
    batch = _rollout_batch(11)
    student = batch["student_logits"].clone().requires_grad_(True)
    empty = torch.zeros_like(batch["response_mask"])
    out = minillm_loss(**{**batch, "student_logits": student, "response_mask": empty})
    assert out.total.item() == 0.0
    (grad,) = torch.autograd.grad(out.total, student)
    assert torch.isfinite(grad).all() and (grad == 0).all()
    assert whiten_advantages(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.bool)).abs().sum() == 0


def test_empty_responses() -> None:
    empty = torch.zeros(2, 0)
    mask = torch.zeros(2, 0, dtype=torch.bool)
    assert normalized_returns(empty, mask).shape == (2, 0)
    assert ppo_clipped_pg_loss(empty, empty, empty, mask).item() == 0.0


def test_teacher_gets_no_gradient_and_bf16_is_upcast() -> None:
    batch = _rollout_batch(12)
    student = batch["student_logits"].clone().requires_grad_(True)
    teacher = batch["teacher_logits"].clone().requires_grad_(True)
    out = minillm_loss(**{**batch, "student_logits": student, "teacher_logits": teacher})
    out.total.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}
    bf16 = minillm_loss(**half)
    assert bf16.total.dtype == torch.float32


# --- bad inputs ------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    teacher, old, mask = _three_tokens()
    with pytest.raises(ValueError, match=r"old_logprobs has shape \(1, 2\).*response_mask"):
        token_rewards(teacher, old[:, :2], mask)
    with pytest.raises(ValueError, match="teacher_mix_alpha must be in"):
        importance_weights(old, teacher, mask, teacher_mix_alpha=1.5)
    with pytest.raises(ValueError, match="gamma must be in"):
        normalized_returns(old, mask, gamma=-0.1)
    with pytest.raises(ValueError, match="normalization must be"):
        normalized_returns(old, mask, normalization="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip_range must be > 0"):
        ppo_clipped_pg_loss(old, old, old, mask, clip_range=0.0)
    with pytest.raises(ValueError, match="reward_scaling must be > 0"):
        token_rewards(teacher, old, mask, reward_scaling=0.0)
    with pytest.raises(ValueError, match="top-k/top-p"):
        token_rewards(teacher.masked_fill(torch.tensor([[False, True, False]]), -math.inf), old, mask)
    with pytest.raises(ValueError, match="kd_ratio must be in"):
        pretrain_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), kd_ratio=2.0)
    batch = _rollout_batch()
    with pytest.raises(ValueError, match="the logits that predict each response token"):
        minillm_loss(**{**batch, "student_logits": batch["student_logits"][:, :-1]})
    with pytest.raises(ValueError, match="lm_student_logits and lm_labels together"):
        minillm_loss(**batch, lm_labels=torch.zeros(1, 2, dtype=torch.long))
