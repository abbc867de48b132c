r"""The analytic gradients behind `reference_impls.losses.fused`: $\partial L / \partial \log Q$ per
divergence, and one chunk's loss and gradient with respect to the student logits.

The fused losses never let autograd see the logits (holding them for the backward pass is the
memory they save), so the gradient of every divergence of `reference_impls.losses` is written
out here by hand, in the same conventions (read the module docstring of
`reference_impls.losses.fused`). Pushing the gradient through the LM head, and the chunk loop
around it, stay in `reference_impls.losses.fused`.

## Gradients with respect to the student logits

Write $P = \mathrm{softmax}(t)$, $Q = \mathrm{softmax}(s)$ with $s = z_s / T$, $t = z_t / T$, and
let $g_v = \partial L / \partial \log Q_v$ for one position. The log-softmax backward gives
$\partial L / \partial s_v = g_v - Q_v \sum_u g_u$ and $\partial L / \partial z_{s,v} =
\tfrac1T\, \partial L / \partial s_v$ (times $T^2$ with `scale_by_t2`). Per divergence, on the
kept (finite) entries, with $M$ the relevant mixture:

| divergence | $g_v = \partial L / \partial \log Q_v$ |
|---|---|
| forward KL $\sum P(\log P - \log Q)$ | $-P_v$ |
| reverse KL $\sum Q(\log Q - \log P)$ | $Q_v(\log Q_v - \log P_v + 1)$ |
| generalized JSD, $M = \beta P + (1-\beta) Q$ | $(1-\beta)\, Q_v (\log Q_v - \log M_v)$ |
| TVD $\tfrac12 \sum \lvert P - Q \rvert$ | $\tfrac12\, Q_v\, \mathrm{sign}(Q_v - P_v)$ |
| skew FKL, $M = \alpha P + (1-\alpha) Q$ | $-P_v\, (1-\alpha) Q_v / M_v$ |
| skew RKL, $M = (1-\alpha) P + \alpha Q$ | $Q_v(\log Q_v - \log M_v + 1 - \alpha Q_v / M_v)$ |
| AKL, weight $w$ held constant | $-w P_v + (1-w)\, Q_v(\log Q_v - \log P_v + 1)$ |
| ToDi, $w_v = \sigma(\log P_v - \log Q_v)$ held constant | $-w_v P_v + (1-w_v)\, Q_v(\log Q_v - \log P_v + 1)$ |

(For generalized JSD the $\partial \log M$ terms cancel because $\beta P + (1-\beta) Q = M$.)
The hard-label term $-\log \mathrm{softmax}(z_s)_y$ (at $T = 1$) has gradient
$\mathrm{softmax}(z_s) - \mathrm{onehot}(y)$; `chunk_loss_and_grad` adds it to the divergence's.
The tests check every formula against autograd of `reference_impls.losses`.

Papers: `agarwal2024gkd` (generalized JSD), `gu2024minillm`, `ko2024distillm`, `wen2023fdistill`,
`wu2025akl`, `jung2025todi`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from reference_impls.losses.divergences import DIVERGENCES, adaptive_kl_weight
from reference_impls.losses.numerics import finite_log_softmax, log_mixture

# --- per-divergence value and dL/dlog Q (the table in the module docstring) -----------------------
# Each takes log P and log Q (0 where an entry is masked) and the kept-entry mask, and returns the
# per-position values [C] and g = dL/dlog Q [C, V] (0 on masked entries).

DivergenceGrad = Callable[..., tuple[Tensor, Tensor]]


def _masked_rows(keep: Tensor, terms: Tensor) -> Tensor:
    return torch.where(keep, terms, 0.0).sum(-1)


def _forward_kl_grad(log_p: Tensor, log_q: Tensor, keep: Tensor, form: str = "kl") -> tuple[Tensor, Tensor]:
    if form not in ("kl", "ce"):
        raise ValueError(f"form must be 'kl' or 'ce', got {form!r}")
    p = log_p.exp()
    terms = p * (log_p - log_q) if form == "kl" else -p * log_q
    return _masked_rows(keep, terms), torch.where(keep, -p, 0.0)


def _reverse_kl_grad(log_p: Tensor, log_q: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    q = log_q.exp()
    log_ratio = log_q - log_p
    return _masked_rows(keep, q * log_ratio), torch.where(keep, q * (log_ratio + 1), 0.0)


def _generalized_jsd_grad(
    log_p: Tensor, log_q: Tensor, keep: Tensor, beta: float = 0.5
) -> tuple[Tensor, Tensor]:
    if beta == 0.0:  # the same endpoints as losses.generalized_jsd
        return _forward_kl_grad(log_p, log_q, keep)
    if beta == 1.0:
        return _reverse_kl_grad(log_p, log_q, keep)
    log_m = log_mixture(log_p, log_q, beta)
    q = log_q.exp()
    student_part = q * (log_q - log_m)
    terms = beta * log_p.exp() * (log_p - log_m) + (1 - beta) * student_part
    return _masked_rows(keep, terms), torch.where(keep, (1 - beta) * student_part, 0.0)


def _total_variation_grad(log_p: Tensor, log_q: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    p, q = log_p.exp(), log_q.exp()
    gap = q - p
    # sign(0) = 0 matches autograd's subgradient of |x| at 0.
    return _masked_rows(keep, 0.5 * gap.abs()), torch.where(keep, 0.5 * q * gap.sign(), 0.0)


def _mixture_share(log_q: Tensor, log_m: Tensor, weight: float) -> Tensor:
    r"""$w Q / M$ in log space (in $[0, 1]$, no 0/0 where both are tiny); 0 when $w = 0$."""
    if weight == 0.0:
        return torch.zeros_like(log_q)
    return (math.log(weight) + log_q - log_m).exp()


def _skew_forward_kl_grad(
    log_p: Tensor, log_q: Tensor, keep: Tensor, alpha: float = 0.1
) -> tuple[Tensor, Tensor]:
    log_m = log_mixture(log_p, log_q, alpha)
    p = log_p.exp()
    share = _mixture_share(log_q, log_m, 1.0 - alpha)
    return _masked_rows(keep, p * (log_p - log_m)), torch.where(keep, -p * share, 0.0)


def _skew_reverse_kl_grad(
    log_p: Tensor, log_q: Tensor, keep: Tensor, alpha: float = 0.1
) -> tuple[Tensor, Tensor]:
    log_m = log_mixture(log_p, log_q, 1.0 - alpha)
    q = log_q.exp()
    log_ratio = log_q - log_m
    grad = q * (log_ratio + 1 - _mixture_share(log_q, log_m, alpha))
    return _masked_rows(keep, q * log_ratio), torch.where(keep, grad, 0.0)


def _adaptive_kl_grad(log_p: Tensor, log_q: Tensor, keep: Tensor, mu: float = 0.5) -> tuple[Tensor, Tensor]:
    p = torch.where(keep, log_p.exp(), 0.0)
    q = torch.where(keep, log_q.exp(), 0.0)
    w = adaptive_kl_weight(p, q, mu)  # the same constant head/tail weight as losses.adaptive_kl
    log_ratio = log_q - log_p
    terms = -w * p * log_ratio + (1 - w) * q * log_ratio
    grad = -w * p + (1 - w) * q * (log_ratio + 1)
    return _masked_rows(keep, terms), torch.where(keep, grad, 0.0)


def _todi_grad(log_p: Tensor, log_q: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    # The same per-entry weights as losses.todi, constants for the gradient there too.
    log_ratio = log_p - log_q
    w_forward, w_reverse = torch.sigmoid(log_ratio), torch.sigmoid(-log_ratio)
    p, q = log_p.exp(), log_q.exp()
    terms = w_forward * p * log_ratio - w_reverse * q * log_ratio
    grad = -w_forward * p + w_reverse * q * (1 - log_ratio)
    return _masked_rows(keep, terms), torch.where(keep, grad, 0.0)


FUSED_DIVERGENCES: Mapping[str, DivergenceGrad] = MappingProxyType(
    {
        "forward-kl": _forward_kl_grad,
        "reverse-kl": _reverse_kl_grad,
        "generalized-jsd": _generalized_jsd_grad,
        "total-variation": _total_variation_grad,
        "skew-forward-kl": _skew_forward_kl_grad,
        "skew-reverse-kl": _skew_reverse_kl_grad,
        "adaptive-kl": _adaptive_kl_grad,
        "todi": _todi_grad,
    }
)
"""The divergences of `reference_impls.losses.DIVERGENCES`, by the same names."""
assert set(FUSED_DIVERGENCES) == set(DIVERGENCES), "every divergence of the loss API needs a fused form"


# --- one chunk: loss sum and gradient w.r.t. the student logits -----------------------------------


def chunk_loss_and_grad(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor | None,
    *,
    divergence: str | None,
    hyperparameters: tuple[tuple[str, Any], ...],
    temperature: float,
    scale_by_t2: bool,
    hard_label_weight: float,
    math_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Sum of the loss over the chunk's rows and its gradient w.r.t. `student_logits` `[C, V]`.

    `divergence` is a key of `FUSED_DIVERGENCES`, or `None` for the hard-label term alone;
    `teacher_logits` `[C, V]` and `targets` `[C]` may be `None` when their term is off.
    """
    logits = student_logits.to(math_dtype)
    total = logits.new_zeros(())
    grad = torch.zeros_like(logits)
    if divergence is not None:
        assert teacher_logits is not None
        student = logits / temperature
        teacher = teacher_logits.to(math_dtype) / temperature
        keep = ~(student.isinf() | teacher.isinf())
        log_q_full = finite_log_softmax(student)
        log_p = torch.where(keep, finite_log_softmax(teacher), 0.0)
        log_q = torch.where(keep, log_q_full, 0.0)
        rows, g = FUSED_DIVERGENCES[divergence](log_p, log_q, keep, **dict(hyperparameters))
        t2 = temperature**2 if scale_by_t2 else 1.0
        total = total + rows.sum() * t2
        # Log-softmax backward, then d s / d z = 1/T.
        grad = (g - log_q_full.exp() * g.sum(-1, keepdim=True)) * (t2 / temperature)
    if hard_label_weight:
        assert targets is not None
        log_probs = torch.log_softmax(logits, dim=-1)  # T = 1, as losses.hard_label_ce
        total = total - hard_label_weight * log_probs.gather(-1, targets[:, None]).sum()
        ce_grad = log_probs.exp()
        ce_grad.scatter_add_(-1, targets[:, None], torch.full_like(ce_grad[:, :1], -1.0))
        grad = grad + hard_label_weight * ce_grad
    return total, grad
