r"""Token-level distillation losses: the one loss API every kdatlas method reuses.

Each divergence compares the teacher's next-token distribution $P$ with the student's $Q$ at every
position, sums over the vocabulary and reduces over positions. They share one convention, stated
here once.

## Conventions

- **Shapes.** `student_logits` and `teacher_logits` are `[..., V]` (usually `[batch, seq, V]`) with
  the same leading shape and the same `V`; different vocabulary sizes raise
  `VocabularyMismatchError`. `labels` is `[...]`, or `None` to count every position.
- **Labels are already aligned: nothing here shifts.** `labels[..., i]` belongs to the logits at
  `[..., i, :]`. For a causal LM the caller passes `logits[:, :-1]` with `labels[:, 1:]`.
  Positions whose label is `-100` are ignored.
- **Distributions.** $P = \mathrm{softmax}(z_t / T)$, $Q = \mathrm{softmax}(z_s / T)$: both logits
  are divided by the temperature $T$ before `log_softmax`. The $T^2$ factor of Hinton et al. is
  opt-in (`scale_by_t2=True`); TRL, DistiLLM, MiniLLM and DSKD do not apply it.
- **Numerics.** Inputs are upcast to at least float32 *before* `log_softmax` (bf16/fp16 in, float32
  out; float64 stays float64, which `gradcheck` needs). Everything is in log space; mixtures use
  `logaddexp`.
- **Teacher stop-gradient.** Teacher logits are detached inside every function.
- **Infinite logits.** A vocabulary entry whose logit is $\pm\infty$ in either model contributes 0,
  in value and in gradient (masked with `torch.where` on finite stand-ins, never `nan_to_num`,
  whose backward still yields NaN). A $-\infty$ shared by both models (masked vocabulary padding)
  therefore gives exactly the divergence over the remaining entries. A $-\infty$ in one model only
  keeps that entry in the other model's normaliser and skips its term: exact where the true term is
  0 (a teacher $-\infty$ in forward KL), otherwise a finite stand-in for a divergence that is truly
  $+\infty$ (it can even be slightly negative). A $+\infty$ logit has no finite softmax and is also
  dropped from its own model's normaliser. NaN logits are not masked: they propagate.
- **Reduction.** The per-position value is the sum over the vocabulary. `"mean"` (default) is the
  per-token mean: sum over valid positions divided by $\max(n_\text{valid}, 1)$, so an all-masked
  batch gives exactly 0 with zero gradients. `"sum"` is the sum; `"none"` returns the per-position
  values with masked positions set to 0. With `num_items_in_batch` (the number of valid tokens in
  the whole accumulated batch) the sum is divided by it instead, which keeps gradient accumulation
  exact (TRL #4719).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal

import torch
from torch import Tensor

from reference_impls.losses.numerics import (
    IGNORE_INDEX,
    Reduction,
    check_labels,
    check_unit_interval,
    log_mixture,
    prepare_log_probs,
    reduce_positions,
    reduce_terms,
    upcast,
)

# --- divergences -----------------------------------------------------------------------------------


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
    form: Literal["kl", "ce"] = "kl",
) -> Tensor:
    r"""Forward KL (word-level KD), mean-seeking: $\mathrm{KL}(P \| Q) = \sum_v P_v (\log P_v - \log Q_v)$.

    `form="ce"` returns the cross-entropy form $-\sum_v P_v \log Q_v = \mathrm{KL}(P\|Q) + H(P)$
    reported by DistiLLM and torchtune: same student gradient, value larger by the teacher entropy.
    Papers: `hinton2015distilling`, `kim2016sequence` (word-level KD).

    Args:
        student_logits: `[..., V]` student logits (gradients flow here).
        teacher_logits: `[..., V]` teacher logits (detached inside).
        labels: `[...]` labels ALREADY aligned with the logits (no shift here); `-100` is ignored.
            `None` counts every position.
        temperature: $T > 0$; both logits are divided by it.
        scale_by_t2: multiply by $T^2$ (opt-in).
        reduction: `"mean"` (per valid token), `"sum"` or `"none"` (per-position values `[...]`).
        num_items_in_batch: if given, the sum is divided by it instead of by the valid-token count.
        form: `"kl"` (exact KL) or `"ce"` (cross-entropy form).

    Returns:
        A scalar, or `[...]` values for `reduction="none"`; float32 (float64 for float64 inputs).

    Raises:
        VocabularyMismatchError: the last dimensions differ.
        ValueError: mismatched shapes, $T \le 0$, unknown `reduction` or `form`.
    """
    if form not in ("kl", "ce"):
        raise ValueError(f"form must be 'kl' or 'ce', got {form!r}")
    log_p, log_q, keep = prepare_log_probs(student_logits, teacher_logits, labels, temperature)
    terms = log_p.exp() * (log_p - log_q) if form == "kl" else -log_p.exp() * log_q
    return reduce_terms(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    r"""Reverse KL, mode-seeking: $\mathrm{KL}(Q \| P) = \sum_v Q_v (\log Q_v - \log P_v)$.

    Paper: `gu2024minillm`. Arguments, return value and errors as in `forward_kl`.
    """
    log_p, log_q, keep = prepare_log_probs(student_logits, teacher_logits, labels, temperature)
    terms = log_q.exp() * (log_q - log_p)
    return reduce_terms(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
    beta: float = 0.5,
) -> Tensor:
    r"""Generalized Jensen-Shannon divergence, GKD/TRL convention.

    $$M = \beta P + (1-\beta) Q, \qquad
      \mathrm{JSD}_\beta = \beta\, \mathrm{KL}(P \| M) + (1-\beta)\, \mathrm{KL}(Q \| M),$$

    with $\log M$ formed by `logaddexp`. It is bounded by the binary entropy $H(\beta)$ in nats.
    The interior formula tends to 0 at both ends ($M \to Q$ or $M \to P$), so the endpoints are
    special-cased: $\beta=0$ returns exactly `forward_kl`, $\beta=1$ exactly `reverse_kl`. The loss
    is therefore discontinuous at $\beta \in \{0, 1\}$. Paper: `agarwal2024gkd`.

    Args:
        beta: mixture weight of the teacher, in $[0, 1]$. Other arguments as in `forward_kl`.
    """
    check_unit_interval("beta", beta)
    if beta in (0.0, 1.0):  # the interior formula would give 0 here
        endpoint = forward_kl if beta == 0.0 else reverse_kl
        return endpoint(
            student_logits,
            teacher_logits,
            labels,
            temperature=temperature,
            scale_by_t2=scale_by_t2,
            reduction=reduction,
            num_items_in_batch=num_items_in_batch,
        )
    log_p, log_q, keep = prepare_log_probs(student_logits, teacher_logits, labels, temperature)
    log_m = log_mixture(log_p, log_q, beta)
    terms = beta * log_p.exp() * (log_p - log_m) + (1 - beta) * log_q.exp() * (log_q - log_m)
    return reduce_terms(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


def total_variation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    r"""Total variation distance $\mathrm{TVD}(P, Q) = \tfrac12 \sum_v |P_v - Q_v| \in [0, 1]$.

    Paper: `wen2023fdistill`. Arguments, return value and errors as in `forward_kl`.
    """
    log_p, log_q, keep = prepare_log_probs(student_logits, teacher_logits, labels, temperature)
    terms = 0.5 * (log_p.exp() - log_q.exp()).abs()
    return reduce_terms(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


def skew_forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
    alpha: float = 0.1,
) -> Tensor:
    r"""Skew forward KL $\mathrm{SKL}_\alpha = \mathrm{KL}(P \| \alpha P + (1-\alpha) Q) \le -\log\alpha$.

    $\alpha = 0$ is forward KL. Exact KL, unlike DistiLLM's code, which reports the CE form.
    Paper: `ko2024distillm` (default $\alpha = 0.1$).

    Args:
        alpha: skew in $[0, 1]$. Other arguments as in `forward_kl`.
    """
    check_unit_interval("alpha", alpha)
    log_p, log_q, keep = prepare_log_probs(student_logits, teacher_logits, labels, temperature)
    terms = log_p.exp() * (log_p - log_mixture(log_p, log_q, alpha))
    return reduce_terms(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


def skew_reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
    alpha: float = 0.1,
) -> Tensor:
    r"""Skew reverse KL $\mathrm{SRKL}_\alpha = \mathrm{KL}(Q \| (1-\alpha) P + \alpha Q) \le -\log\alpha$.

    $\alpha = 0$ is reverse KL. Paper: `ko2024distillm` (default $\alpha = 0.1$).

    Args:
        alpha: skew in $[0, 1]$. Other arguments as in `forward_kl`.
    """
    check_unit_interval("alpha", alpha)
    log_p, log_q, keep = prepare_log_probs(student_logits, teacher_logits, labels, temperature)
    terms = log_q.exp() * (log_q - log_mixture(log_p, log_q, 1.0 - alpha))
    return reduce_terms(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


def adaptive_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
    mu: float = 0.5,
) -> Tensor:
    r"""Adaptive KL (AKL): forward and reverse KL weighted by where the teacher-student gap lies.

    Per position, sort the teacher probabilities in descending order. The head $\mathcal{H}$ is the
    tokens whose cumulative teacher mass is $\le \mu$, plus always the most likely token. With the
    gaps taken as constants (stop-gradient),

    $$g_\text{head} = \sum_{v \in \mathcal{H}} |P_v - Q_v|, \quad
      g_\text{tail} = \sum_{v \notin \mathcal{H}} |P_v - Q_v|, \quad
      \mathrm{AKL} = \frac{g_\text{head}\, \mathrm{KL}(P\|Q) + g_\text{tail}\, \mathrm{KL}(Q\|P)}
                          {g_\text{head} + g_\text{tail}}.$$

    The head mask is scattered back to vocabulary order before it meets the gaps (building it in
    sorted order and applying it to unsorted gaps is a known porting bug). Where $P = Q$ exactly the
    gaps are 0/0: equal weights are used, and the loss is 0 there anyway. Paper: `wu2025akl`.

    Args:
        mu: head mass threshold in $[0, 1]$. Other arguments as in `forward_kl`.
    """
    check_unit_interval("mu", mu)
    log_p, log_q, keep = prepare_log_probs(student_logits, teacher_logits, labels, temperature)
    p = torch.where(keep, log_p.exp(), 0.0)
    q = torch.where(keep, log_q.exp(), 0.0)
    w_forward = adaptive_kl_weight(p, q, mu)
    terms = w_forward * p * (log_p - log_q) + (1 - w_forward) * q * (log_q - log_p)
    return reduce_terms(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


@torch.no_grad()
def adaptive_kl_weight(p: Tensor, q: Tensor, mu: float) -> Tensor:
    """AKL's forward-KL weight $g_\text{head} / (g_\text{head} + g_\text{tail})$ per position, ``[..., 1]``.

    The head is the longest run of the teacher's most probable tokens whose cumulative mass does
    not exceed ``mu`` (and always the most probable token, even when it alone exceeds ``mu``);
    the gaps are $|P - Q|$. A constant: no gradient flows through it.
    """
    gap = (p - q).abs()
    p_sorted, order = p.sort(dim=-1, descending=True)
    head_sorted = p_sorted.cumsum(dim=-1) <= mu
    head_sorted[..., 0] = True
    head = torch.zeros_like(head_sorted).scatter(-1, order, head_sorted)
    g_head = torch.where(head, gap, 0.0).sum(-1, keepdim=True)
    g_total = gap.sum(-1, keepdim=True)
    return torch.where(g_total > 0, g_head / g_total.clamp_min(torch.finfo(gap.dtype).tiny), 0.5)


def todi(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    r"""ToDi (token-wise distillation): forward and reverse KL mixed per vocabulary entry.

    With $r_v = \log P_v - \log Q_v$ and the weight $w_v = \sigma(r_v)$ taken as a constant
    (stop-gradient), per position

    $$\mathrm{ToDi}(P, Q) = \sum_v \Big[ w_v\, P_v \log\frac{P_v}{Q_v}
      + (1 - w_v)\, Q_v \log\frac{Q_v}{P_v} \Big].$$

    An entry the student underestimates ($P_v > Q_v$, $w_v > \tfrac12$) is driven mostly by the
    forward-KL term, one it overestimates mostly by the reverse-KL term. As in the authors' code,
    $1 - w_v$ is computed as $\sigma(-r_v)$, which keeps its precision where $w_v \to 1$.

    The *value* is the Jeffreys divergence $\mathrm{KL}(P\|Q) + \mathrm{KL}(Q\|P) =
    \sum_v (P_v - Q_v)(\log P_v - \log Q_v)$, because $\sigma(\log P_v/Q_v) = P_v / (P_v + Q_v)$; it
    is symmetric in $P$ and $Q$ and every vocabulary term is $\ge 0$. Only the *gradient* differs
    from Jeffreys', because the weights are constants for it:
    $\partial\,\mathrm{ToDi} / \partial \log Q_v = -w_v P_v + (1 - w_v)\, Q_v (\log Q_v - \log P_v + 1)$.

    Verified against `compute_ToDi` in the authors' `code/criterions/various_divergence.py`
    (jungseongryong/ToDi @37e9bec): both logits divided by the KD temperature, float32
    log-softmax, detached sigmoid weights, ±inf entries masked, sum over the vocabulary.
    Paper: `jung2025todi`.

    Args:
        student_logits: `[..., V]` student logits (gradients flow here).
        teacher_logits: `[..., V]` teacher logits (detached inside).
        labels: `[...]` labels ALREADY aligned with the logits; `-100` is ignored.
        temperature: $T > 0$; both logits are divided by it (the authors' scripts use 2.0).
        scale_by_t2: multiply by $T^2$ (opt-in; the authors do not).
        reduction: `"mean"`, `"sum"` or `"none"`, as in `forward_kl`.
        num_items_in_batch: if given, the sum is divided by it instead of by the valid-token count.

    Returns:
        A scalar, or `[...]` values for `reduction="none"`; float32 (float64 for float64 inputs).

    Raises:
        VocabularyMismatchError: the last dimensions differ.
        ValueError: mismatched shapes, $T \le 0$, unknown `reduction`.
    """
    log_p, log_q, keep = prepare_log_probs(student_logits, teacher_logits, labels, temperature)
    log_ratio = log_p - log_q
    # Constants for the gradient: with them differentiated, the objective would be plain Jeffreys.
    w_forward = torch.sigmoid(log_ratio).detach()
    w_reverse = torch.sigmoid(-log_ratio).detach()
    terms = w_forward * log_p.exp() * log_ratio - w_reverse * log_q.exp() * log_ratio
    return reduce_terms(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


# --- hard labels and the classic Hinton objective ---------------------------------------------------


def hard_label_ce(
    student_logits: Tensor,
    labels: Tensor,
    *,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    r"""Token cross-entropy with the labels, $-\log Q_{y}$ at $T = 1$, same masking and reduction.

    Args:
        student_logits: `[..., V]` student logits.
        labels: `[...]` target ids ALREADY aligned with the logits; `-100` is ignored.
        reduction: `"mean"`, `"sum"` or `"none"`, as in `forward_kl`.
        num_items_in_batch: if given, the sum is divided by it.
    """
    check_labels(student_logits, labels)
    log_q = torch.log_softmax(upcast(student_logits), dim=-1)
    targets = torch.where(labels == IGNORE_INDEX, 0, labels).unsqueeze(-1)
    nll = -log_q.gather(-1, targets).squeeze(-1)
    return reduce_positions(nll, labels, reduction, num_items_in_batch)


def vanilla_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> Tensor:
    r"""Hinton et al.'s KD objective: hard-label CE plus $T^2$-scaled soft-target KL.

    $$\mathcal{L} = (1-\alpha)\, \mathrm{CE}\big(y, \mathrm{softmax}(z_s)\big)
      + \alpha\, T^2\, \mathrm{KL}\big(\mathrm{softmax}(z_t/T) \,\|\, \mathrm{softmax}(z_s/T)\big)$$

    The gradients of the soft term scale as $1/T^2$ (Hinton et al. 2015, §2), so it is multiplied
    by $T^2$ to keep the two terms balanced when $T$ changes. Both terms are per-token means over
    `labels != -100`. Papers: `hinton2015distilling`; `kim2016sequence` (word-level KD).

    Args:
        student_logits: `[..., V]` student logits.
        teacher_logits: `[..., V]` teacher logits (detached inside).
        labels: `[...]` target ids ALREADY aligned with the logits; `-100` is ignored.
        temperature: $T > 0$ of the soft term.
        alpha: weight of the soft term, in $[0, 1]$.
    """
    check_unit_interval("alpha", alpha)
    soft = forward_kl(student_logits, teacher_logits, labels, temperature=temperature, scale_by_t2=True)
    return (1 - alpha) * hard_label_ce(student_logits, labels) + alpha * soft


DIVERGENCES: Mapping[str, Callable[..., Tensor]] = MappingProxyType(
    {
        "forward-kl": forward_kl,
        "reverse-kl": reverse_kl,
        "generalized-jsd": generalized_jsd,
        "total-variation": total_variation,
        "skew-forward-kl": skew_forward_kl,
        "skew-reverse-kl": skew_reverse_kl,
        "adaptive-kl": adaptive_kl,
        "todi": todi,
    }
)
"""Read-only map from divergence name to function. Every function takes `(student_logits,
teacher_logits, labels=None, *, temperature, scale_by_t2, reduction, num_items_in_batch)` plus its own
hyper-parameter (`form`, `beta`, `alpha` or `mu`; `todi` has none)."""


def get_divergence(name: str) -> Callable[..., Tensor]:
    """The divergence registered as `name` (`forward_kl` is accepted for `forward-kl`).

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in DIVERGENCES:
        raise KeyError(f"unknown divergence {name!r}; valid names: {', '.join(DIVERGENCES)}")
    return DIVERGENCES[key]
