r"""MiniLLM's objective as pure functions on response-aligned tensors: the four tricks of the paper
(rewards and returns, whitening, importance weights, PPO clipping, the single-step term), the
language-modelling term and their sum (`minillm_loss`). See `reference_impls.white_box.logits.minillm`
for the method and where the authors' code departs from the paper."""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from reference_impls.losses import IGNORE_INDEX, forward_kl, hard_label_ce, reverse_kl
from reference_impls.losses.numerics import check_unit_interval
from reference_impls.white_box.logits.minillm.checks import (
    as_float,
    check_finite_where_valid,
    check_logits,
    check_same_shape,
)

ReturnNormalization = Literal["count", "discounted", "none"]


# --- 1. rewards, returns, advantages ---------------------------------------------------------------


def token_rewards(
    teacher_logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    *,
    reward_scaling: float | None = 0.5,
    reward_clip: float | None = 100.0,
) -> Tensor:
    r"""Per-token reward $r_t = \mathrm{clip}\big((\log p(y_t) - \log q_\mathrm{old}(y_t)) / s,\ \pm c\big)$.

    $\log p - \log q$ at the sampled token is the single-sample estimate of the reverse KL's
    integrand. As in `PPOSampler.run_sample` (LMOps `minillm/sampler.py`), $q_\mathrm{old}$ is the
    student at sampling time, the sum is divided by `reward_scaling` $s$ (`--reward-scaling 0.5` in
    `scripts/gpt2/minillm/train_base_xl.sh`) and then clipped to $\pm c$ (`--cliprange-reward 100`
    there; the argparse default is 1).

    Args:
        teacher_logprobs: `[B, T]` teacher log-probs of the sampled response tokens.
        old_logprobs: `[B, T]` student log-probs of the same tokens at sampling time.
        response_mask: `[B, T]` True (or 1) for real response tokens, EOS included.
        reward_scaling: divisor $s > 0$; `None` leaves the rewards unscaled.
        reward_clip: bound $c > 0$; `None` (or 0, as in the official `if clip_reward:`) disables it.

    Returns:
        `[B, T]` detached float rewards, 0 outside the mask.

    Raises:
        ValueError: shapes differ, $s \le 0$, $c < 0$, or a log-prob is not finite inside the mask.
    """
    mask = response_mask.bool()
    check_same_shape(mask, teacher_logprobs=teacher_logprobs, old_logprobs=old_logprobs)
    check_finite_where_valid(mask, teacher_logprobs=teacher_logprobs, old_logprobs=old_logprobs)
    if reward_scaling is not None and not reward_scaling > 0:
        raise ValueError(f"reward_scaling must be > 0 (or None), got {reward_scaling}")
    if reward_clip is not None and not reward_clip >= 0:
        raise ValueError(f"reward_clip must be >= 0 (or None), got {reward_clip}")
    log_ratio = as_float(teacher_logprobs.detach()) - as_float(old_logprobs.detach())
    rewards = torch.where(mask, log_ratio, 0.0)
    if reward_scaling is not None:
        rewards = rewards / reward_scaling
    if reward_clip:
        rewards = rewards.clamp(-reward_clip, reward_clip)
    return rewards


def normalized_returns(
    rewards: Tensor,
    response_mask: Tensor,
    *,
    gamma: float = 0.95,
    include_current: bool = True,
    normalization: ReturnNormalization = "count",
) -> Tensor:
    r"""Length-normalised discounted return of each response token.

    With `include_current=True` (the official code, `_get_advantages_and_returns`):

    $$R_t = \frac{\sum_{i \ge t} \gamma^{i-t} r_i}{\max\big(\sum_{i \ge t} m_i,\ 1\big)}.$$

    With `include_current=False` (the paper's $R^\mathrm{Norm}_{t+1}$ of §2.2, whose current token is
    handled by the exact single-step term) both sums start at $i = t+1$, and the last token gets 0.
    The denominator is chosen by `normalization`: `"count"` (valid tokens, LMOps), `"discounted"`
    ($\sum \gamma^{i-t} m_i$, TRL's `MiniLLMTrainer`, so that $\gamma = 0$ gives $R_t = r_t$) or
    `"none"` (plain discounted sum). Note that with `"count"` and $\gamma = 0$, $R_t = r_t / n_{\ge t}$.

    Args:
        rewards: `[B, T]` per-token rewards (from `token_rewards`).
        response_mask: `[B, T]` True for real response tokens.
        gamma: discount $\gamma \in [0, 1]$ (LMOps `--gamma` default 0.95).
        include_current: whether $R_t$ includes $r_t$ (official code) or starts at $t+1$ (paper).
        normalization: `"count"`, `"discounted"` or `"none"`.

    Returns:
        `[B, T]` detached returns, 0 outside the mask.

    Raises:
        ValueError: shapes differ, $\gamma \notin [0, 1]$, unknown `normalization`.
    """
    mask = response_mask.bool()
    check_same_shape(mask, rewards=rewards)
    check_unit_interval("gamma", gamma)
    if normalization not in ("count", "discounted", "none"):
        raise ValueError(f"normalization must be 'count', 'discounted' or 'none', got {normalization!r}")
    rewards = torch.where(mask, as_float(rewards.detach()), 0.0)
    if rewards.shape[1] == 0:  # empty responses
        return rewards
    valid = mask.to(rewards.dtype)
    total = torch.zeros_like(rewards[:, 0])
    norm = torch.zeros_like(total)
    returns, norms = [], []
    # Backward recursion acc_t = x_t + gamma * acc_{t+1}; the t+1 form reads the accumulators before step t.
    for t in reversed(range(rewards.shape[1])):
        if not include_current:
            returns.append(total)
            norms.append(norm)
        total = rewards[:, t] + gamma * total
        norm = valid[:, t] + (gamma * norm if normalization == "discounted" else norm)
        if include_current:
            returns.append(total)
            norms.append(norm)
    returns_t = torch.stack(returns[::-1], dim=1)
    if normalization != "none":
        # Nothing valid ahead means an all-zero sum: divide by 1, as the official `lens == 0 -> 1`.
        norms_t = torch.stack(norms[::-1], dim=1)
        returns_t = returns_t / torch.where(norms_t > 0, norms_t, 1.0)
    return torch.where(mask, returns_t, 0.0)


def whiten_advantages(
    advantages: Tensor,
    response_mask: Tensor,
    *,
    include_padding: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    r"""Whiten advantages: $(A - \mu) / \sqrt{\sigma^2 + \epsilon}$ with the unbiased variance.

    `include_padding=True` reproduces `whiten` in LMOps `minillm/minillm/utils.py`: $\mu$ and
    $\sigma^2$ are over every entry of the padded `[B, T]` minibatch, the zeros after EOS included (so
    they depend on the padded length). `include_padding=False` uses only the valid tokens.

    Args:
        advantages: `[B, T]` returns to whiten.
        response_mask: `[B, T]` True for real response tokens.
        include_padding: statistics over all entries (official) or over valid tokens only.
        eps: added to the variance (1e-8 in the official code).

    Returns:
        `[B, T]` detached whitened advantages, 0 outside the mask. With fewer than two entries in
        the statistics the variance is taken as 0.
    """
    mask = response_mask.bool()
    check_same_shape(mask, advantages=advantages)
    advantages = torch.where(mask, as_float(advantages.detach()), 0.0)
    population = advantages.flatten() if include_padding else advantages[mask]
    if population.numel() == 0:
        return advantages
    mean = population.mean()
    var = population.var(correction=1) if population.numel() > 1 else torch.zeros_like(mean)
    return torch.where(mask, (advantages - mean) * torch.rsqrt(var + eps), 0.0)


# --- 2. teacher-mixed sampling ---------------------------------------------------------------------


def importance_weights(
    old_logprobs: Tensor,
    teacher_logprobs: Tensor,
    response_mask: Tensor,
    *,
    teacher_mix_alpha: float = 0.2,
) -> Tensor:
    r"""Per-token weight $w_t = q_\mathrm{old}(y_t) / \big((1-\alpha)\,q_\mathrm{old}(y_t) + \alpha\,p(y_t)\big)$.

    The sampler draws each token from the probability mixture $\tilde p = (1-\alpha) q + \alpha p$
    (the patched `sample()` in LMOps `minillm/transformers/.../generation/utils.py`), and
    `PPOSampler.run_sample` stores $w_t = q_\mathrm{old}/\tilde p$ computed from the same
    sampling-time log-probs. In `ppo_clipped_pg_loss` it multiplies $q_\theta/q_\mathrm{old}$,
    giving $q_\theta / \tilde p$. The exact weight is the product of these ratios over the prefix;
    the paper (§2.2) and the code keep only the current token's, to cut variance. Computed in log
    space: $\log w = \log q - \operatorname{logaddexp}(\log(1-\alpha) + \log q, \log\alpha + \log p)$.

    Args:
        old_logprobs: `[B, T]` student log-probs of the sampled tokens at sampling time.
        teacher_logprobs: `[B, T]` teacher log-probs of the same tokens.
        response_mask: `[B, T]` True for real response tokens.
        teacher_mix_alpha: $\alpha \in [0, 1]$ (`--teacher-mixed-alpha 0.2` in the scripts);
            0 gives exactly 1 (pure on-policy sampling).

    Returns:
        `[B, T]` detached weights, 1 outside the mask.

    Raises:
        ValueError: shapes differ, $\alpha \notin [0, 1]$, or non-finite log-probs inside the mask.
    """
    mask = response_mask.bool()
    check_same_shape(mask, old_logprobs=old_logprobs, teacher_logprobs=teacher_logprobs)
    check_unit_interval("teacher_mix_alpha", teacher_mix_alpha)
    check_finite_where_valid(mask, old_logprobs=old_logprobs, teacher_logprobs=teacher_logprobs)
    if teacher_mix_alpha == 0.0:
        return torch.ones_like(as_float(old_logprobs.detach()))
    log_q = torch.where(mask, as_float(old_logprobs.detach()), 0.0)
    log_p = torch.where(mask, as_float(teacher_logprobs.detach()), 0.0)
    student_part = log_q + math.log1p(-teacher_mix_alpha) if teacher_mix_alpha < 1.0 else None
    teacher_part = log_p + math.log(teacher_mix_alpha)
    log_mix = teacher_part if student_part is None else torch.logaddexp(student_part, teacher_part)
    return torch.where(mask, (log_q - log_mix).exp(), 1.0)


# --- 3. the clipped policy gradient ----------------------------------------------------------------


def ppo_clipped_pg_loss(
    student_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    weights: Tensor | None = None,
    clip_range: float | None = 0.2,
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    r"""PPO-clipped, importance-weighted policy-gradient loss (`Loss._pg_loss`, LMOps `minillm/losses.py`).

    $$\rho_t = \exp(\log q_\theta(y_t) - \log q_\mathrm{old}(y_t))\, w_t, \qquad
      \mathcal{L}_\mathrm{PG} = \frac{1}{n} \sum_{t\in\text{mask}}
      \max\big(-A_t \rho_t,\ -A_t\,\mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\big),$$

    with $n$ the valid-token count (clamped to 1) or `num_items_in_batch`. $\epsilon$ = `--cliprange`
    (default 0.2); `clip_range=None` gives the unclipped importance-weighted REINFORCE loss.

    Args:
        student_logprobs: `[B, T]` current student log-probs of the sampled tokens (gradients flow here).
        old_logprobs: `[B, T]` student log-probs at sampling time (constants).
        advantages: `[B, T]` advantages (constants), e.g. whitened `normalized_returns`.
        response_mask: `[B, T]` True for real response tokens.
        weights: `[B, T]` teacher-mixed-sampling weights from `importance_weights`; `None` means 1.
        clip_range: $\epsilon > 0$, or `None` for no clipping.
        num_items_in_batch: if given, the masked sum is divided by it instead of by $n$.

    Returns:
        Scalar loss (0 with zero gradients for an all-masked batch).
    """
    mask = response_mask.bool()
    weights = torch.ones_like(advantages) if weights is None else weights
    check_same_shape(
        mask,
        student_logprobs=student_logprobs,
        old_logprobs=old_logprobs,
        advantages=advantages,
        weights=weights,
    )
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range must be > 0 (or None for no clipping), got {clip_range}")
    dtype = torch.promote_types(student_logprobs.dtype, torch.float32)
    log_ratio = torch.where(mask, student_logprobs.to(dtype) - old_logprobs.detach().to(dtype), 0.0)
    ratio = log_ratio.exp() * weights.detach().to(dtype)
    advantages = advantages.detach().to(dtype)
    per_token = -advantages * ratio
    if clip_range is not None:
        # Pessimistic bound: the larger loss wins, so a step beyond the trust region earns nothing.
        per_token = torch.maximum(per_token, -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range))
    total = torch.where(mask, per_token, 0.0).sum()
    return total / (num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp_min(1))


# --- 4. the single-step term and the pre-training term ---------------------------------------------


def _labels_from_mask(response_mask: Tensor) -> Tensor:
    return torch.where(response_mask.bool(), 0, IGNORE_INDEX)


def single_step_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    response_mask: Tensor,
    *,
    temperature: float = 1.0,
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    r"""Exact single-step reverse KL, $\frac1n \sum_t \mathrm{KL}(q_\theta(\cdot \mid y_{<t}) \,\|\, p(\cdot \mid y_{<t}))$.

    `Loss._reg_loss` (LMOps `minillm/losses.py`) computes cross-entropy minus entropy over the whole
    vocabulary at each sampled prefix, logits of both models divided by `--temperature` (1) and
    $\pm\infty$ entries masked, averaged over valid tokens. This is `losses.reverse_kl` with the
    response mask as labels. The gradient is exact (no sampling) and flows into the student only.

    Args:
        student_logits: `[B, T, V]` student logits predicting response token t (gradients flow here).
        teacher_logits: `[B, T, V]` teacher logits at the same positions (detached inside).
        response_mask: `[B, T]` True for real response tokens.
        temperature: $T > 0$ dividing both logits.
        num_items_in_batch: if given, the sum is divided by it.

    Returns:
        Scalar loss.
    """
    check_logits(student_logits, response_mask)
    return reverse_kl(
        student_logits,
        teacher_logits,
        _labels_from_mask(response_mask),
        temperature=temperature,
        num_items_in_batch=num_items_in_batch,
    )


def pretrain_loss(
    student_logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor | None = None,
    *,
    kd_ratio: float = 0.5,
) -> Tensor:
    r"""Pre-training term $\mathcal{L}_\mathrm{PT} = (1-\kappa)\,\mathrm{CE}(y, q) + \kappa \big(-\sum_v p_v \log q_v\big)$.

    `Loss.pt_loss` (LMOps `minillm/losses.py`) on a language-modelling batch (OpenWebText in the
    paper): token cross-entropy plus the forward KL in cross-entropy form, at temperature 1, each a
    mean over `labels != -100`; $\kappa$ = `--kd-ratio` (0.5 in the scripts). Without teacher
    logits (or with $\kappa = 0$) it is the plain cross-entropy.

    Args:
        student_logits: `[B, L, V]` student logits on the LM batch.
        labels: `[B, L]` next-token labels ALREADY aligned with the logits; -100 is ignored.
        teacher_logits: `[B, L, V]` teacher logits on the same batch, or `None`.
        kd_ratio: $\kappa \in [0, 1]$.

    Returns:
        Scalar loss.
    """
    check_unit_interval("kd_ratio", kd_ratio)
    lm = hard_label_ce(student_logits, labels)
    if teacher_logits is None or kd_ratio == 0.0:
        return lm
    return (1.0 - kd_ratio) * lm + kd_ratio * forward_kl(student_logits, teacher_logits, labels, form="ce")


# --- the total -------------------------------------------------------------------------------------


class MiniLLMLoss(NamedTuple):
    """The total MiniLLM loss and its parts (for logging); all scalars."""

    total: Tensor
    policy_gradient: Tensor
    single_step: Tensor
    pretrain: Tensor


def _gather_logprobs(logits: Tensor, token_ids: Tensor, response_mask: Tensor, temperature: float) -> Tensor:
    log_probs = torch.log_softmax(as_float(logits) / temperature, dim=-1)
    ids = torch.where(response_mask.bool(), token_ids, 0).unsqueeze(-1)
    return torch.where(response_mask.bool(), log_probs.gather(-1, ids).squeeze(-1), 0.0)


def minillm_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    old_logprobs: Tensor,
    *,
    rewards: Tensor | None = None,
    weights: Tensor | None = None,
    lm_student_logits: Tensor | None = None,
    lm_labels: Tensor | None = None,
    lm_teacher_logits: Tensor | None = None,
    teacher_mix_alpha: float = 0.2,
    gamma: float = 0.95,
    reward_scaling: float | None = 0.5,
    reward_clip: float | None = 100.0,
    clip_range: float | None = 0.2,
    include_current: bool = True,
    whiten: bool = True,
    single_step: bool = True,
    lm_coef: float = 1.0,
    kd_ratio: float = 0.5,
    temperature: float = 1.0,
) -> MiniLLMLoss:
    r"""One MiniLLM training step's loss: $\mathcal{L}_\mathrm{PG} + \mathcal{L}_\mathrm{single} + \lambda\,\mathcal{L}_\mathrm{PT}$.

    As `PPOTrainer.train` and `Loss.ppo_loss` (LMOps `minillm/`) on one PPO minibatch: rewards and
    weights are fixed at sampling time (pass them, or they are recomputed from `old_logprobs` and
    the teacher's logits, which is the same thing when the teacher is frozen); returns are
    length-normalised and whitened per minibatch; the clipped PG loss, the exact single-step reverse
    KL and $\lambda$ = `lm_coef` times the pre-training loss are summed.

    Defaults (LMOps `minillm/arguments.py` and `scripts/gpt2/minillm/train_base_xl.sh`):
    $\alpha = 0.2$ (`--teacher-mixed-alpha`), $\gamma = 0.95$ (`--gamma`), reward scaling 0.5 and clip
    100 (`--reward-scaling`, `--cliprange-reward`), $\epsilon = 0.2$ (`--cliprange`), $\lambda = 1$
    (`--lm-coef`), $\kappa = 0.5$ (`--kd-ratio`), $T = 1$ (`--temperature`), single step on
    (`--single-step-reg`).

    Args:
        student_logits: `[B, T, V]` current student logits predicting response token t.
        teacher_logits: `[B, T, V]` teacher logits at the same positions.
        response_ids: `[B, T]` sampled response token ids (anything outside the mask).
        response_mask: `[B, T]` True for real response tokens, EOS included.
        old_logprobs: `[B, T]` student log-probs of the tokens at sampling time (same temperature).
        rewards: `[B, T]` stored `token_rewards`, or `None` to compute them here.
        weights: `[B, T]` stored `importance_weights`, or `None` to compute them here.
        lm_student_logits: `[B', L, V]` student logits on a pre-training batch, or `None` (no PT term).
        lm_labels: `[B', L]` aligned labels of that batch.
        lm_teacher_logits: `[B', L, V]` teacher logits on it (for the $\kappa$ FKL part), or `None`.
        teacher_mix_alpha: $\alpha$ of the sampling mixture (0 for pure student sampling).
        gamma: discount of the return.
        reward_scaling: reward divisor, or `None`.
        reward_clip: reward bound, or `None`.
        clip_range: PPO $\epsilon$, or `None`.
        include_current: return from $t$ (code) or from $t+1$ (paper).
        whiten: whiten the advantages (the code always does).
        single_step: add the exact single-step term.
        lm_coef: weight $\lambda$ of the pre-training term.
        kd_ratio: $\kappa$ inside the pre-training term.
        temperature: $T$ dividing both models' logits in the PG and single-step terms.

    Returns:
        `MiniLLMLoss(total, policy_gradient, single_step, pretrain)`.
    """
    mask = response_mask.bool()
    check_same_shape(mask, response_ids=response_ids, old_logprobs=old_logprobs)
    check_logits(student_logits, mask)
    if (lm_student_logits is None) != (lm_labels is None):
        raise ValueError("pass lm_student_logits and lm_labels together (or neither, to skip the PT term)")
    student_logprobs = _gather_logprobs(student_logits, response_ids, mask, temperature)
    if rewards is None or weights is None:
        teacher_logprobs = _gather_logprobs(teacher_logits.detach(), response_ids, mask, temperature)
        if rewards is None:
            rewards = token_rewards(
                teacher_logprobs, old_logprobs, mask, reward_scaling=reward_scaling, reward_clip=reward_clip
            )
        if weights is None:
            weights = importance_weights(
                old_logprobs, teacher_logprobs, mask, teacher_mix_alpha=teacher_mix_alpha
            )
    advantages = normalized_returns(rewards, mask, gamma=gamma, include_current=include_current)
    if whiten:
        advantages = whiten_advantages(advantages, mask)
    pg = ppo_clipped_pg_loss(
        student_logprobs, old_logprobs, advantages, mask, weights=weights, clip_range=clip_range
    )
    zero = pg.new_zeros(())
    single = (
        single_step_loss(student_logits, teacher_logits, mask, temperature=temperature)
        if single_step
        else zero
    )
    pt = zero
    if lm_student_logits is not None and lm_labels is not None:
        pt = pretrain_loss(lm_student_logits, lm_labels, lm_teacher_logits, kd_ratio=kd_ratio)
    return MiniLLMLoss(total=pg + single + lm_coef * pt, policy_gradient=pg, single_step=single, pretrain=pt)
