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

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal

import torch
from torch import Tensor

IGNORE_INDEX = -100
Reduction = Literal["mean", "sum", "none"]


class VocabularyMismatchError(ValueError):
    """Student and teacher logits have different vocabulary sizes (last dimensions)."""

    def __init__(self, student_vocab: int, teacher_vocab: int) -> None:
        shared = min(student_vocab, teacher_vocab)
        super().__init__(
            f"student vocabulary size {student_vocab} != teacher vocabulary size {teacher_vocab}. "
            "Token-level divergences need one shared vocabulary. For models with different tokenizers "
            "use a cross-tokenizer method (ULD or DSKD): see the kdatlas entries `uld` and `dskd`. "
            "If both models use the identical tokenizer and the extra rows are only padding "
            f"(e.g. Qwen2.5 151936 vs 152064), slice both to the shared vocabulary: logits[..., :{shared}]."
        )
        self.student_vocab = student_vocab
        self.teacher_vocab = teacher_vocab


# --- plumbing: validation, log-probabilities, reduction -------------------------------------------


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_labels(logits: Tensor, labels: Tensor | None) -> None:
    if labels is not None and labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal the logits shape without the vocabulary "
            f"dimension, {tuple(logits.shape[:-1])}. Labels must already be aligned with the logits: "
            "shift before calling (e.g. logits[:, :-1] with labels[:, 1:])."
        )


def _upcast(logits: Tensor) -> Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _finite_log_softmax(logits: Tensor) -> Tensor:
    # exp(finfo.min - max) underflows to exactly 0, so a -inf entry keeps zero mass, while every
    # intermediate stays finite and no NaN can reach the backward pass.
    return torch.log_softmax(logits.masked_fill(logits.isinf(), torch.finfo(logits.dtype).min), dim=-1)


def _prepare(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate inputs; return teacher and student log-probs (0 where masked) and the kept entries."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise VocabularyMismatchError(student_logits.shape[-1], teacher_logits.shape[-1])
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    _check_labels(student_logits, labels)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(
        torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32
    )
    student = student_logits.to(dtype) / temperature
    teacher = teacher_logits.detach().to(dtype) / temperature
    keep = ~(student.isinf() | teacher.isinf())
    log_p = torch.where(keep, _finite_log_softmax(teacher), 0.0)
    log_q = torch.where(keep, _finite_log_softmax(student), 0.0)
    return log_p, log_q, keep


def _log_mixture(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    r"""$\log(w\,a + (1-w)\,b)$ in log space; exact at $w \in \{0, 1\}$."""
    if weight == 0.0:
        return log_b
    if weight == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(weight), log_b + math.log1p(-weight))


def _reduce_positions(
    per_position: Tensor,
    labels: Tensor | None,
    reduction: Reduction,
    num_items_in_batch: int | Tensor | None,
) -> Tensor:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if num_items_in_batch is not None and reduction != "mean":
        raise ValueError(f"num_items_in_batch replaces the 'mean' denominator; got reduction={reduction!r}")
    valid = torch.ones_like(per_position, dtype=torch.bool) if labels is None else labels != IGNORE_INDEX
    per_position = torch.where(valid, per_position, 0.0)
    if reduction == "none":
        return per_position
    total = per_position.sum()
    if reduction == "sum":
        return total
    if num_items_in_batch is not None:
        return total / num_items_in_batch
    return total / valid.sum().clamp_min(1)


def _reduce(
    terms: Tensor,
    keep: Tensor,
    labels: Tensor | None,
    temperature: float,
    scale_by_t2: bool,
    reduction: Reduction,
    num_items_in_batch: int | Tensor | None,
) -> Tensor:
    """Zero masked vocabulary entries, sum over the vocabulary, apply opt-in T^2, reduce positions."""
    per_position = torch.where(keep, terms, 0.0).sum(-1)
    if scale_by_t2:
        per_position = per_position * temperature**2
    return _reduce_positions(per_position, labels, reduction, num_items_in_batch)


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
    log_p, log_q, keep = _prepare(student_logits, teacher_logits, labels, temperature)
    terms = log_p.exp() * (log_p - log_q) if form == "kl" else -log_p.exp() * log_q
    return _reduce(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


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
    log_p, log_q, keep = _prepare(student_logits, teacher_logits, labels, temperature)
    terms = log_q.exp() * (log_q - log_p)
    return _reduce(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


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
    _check_unit_interval("beta", beta)
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
    log_p, log_q, keep = _prepare(student_logits, teacher_logits, labels, temperature)
    log_m = _log_mixture(log_p, log_q, beta)
    terms = beta * log_p.exp() * (log_p - log_m) + (1 - beta) * log_q.exp() * (log_q - log_m)
    return _reduce(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


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
    log_p, log_q, keep = _prepare(student_logits, teacher_logits, labels, temperature)
    terms = 0.5 * (log_p.exp() - log_q.exp()).abs()
    return _reduce(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


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
    _check_unit_interval("alpha", alpha)
    log_p, log_q, keep = _prepare(student_logits, teacher_logits, labels, temperature)
    terms = log_p.exp() * (log_p - _log_mixture(log_p, log_q, alpha))
    return _reduce(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


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
    _check_unit_interval("alpha", alpha)
    log_p, log_q, keep = _prepare(student_logits, teacher_logits, labels, temperature)
    terms = log_q.exp() * (log_q - _log_mixture(log_p, log_q, 1.0 - alpha))
    return _reduce(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


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
    _check_unit_interval("mu", mu)
    log_p, log_q, keep = _prepare(student_logits, teacher_logits, labels, temperature)
    p = torch.where(keep, log_p.exp(), 0.0)
    q = torch.where(keep, log_q.exp(), 0.0)
    w_forward = adaptive_kl_weight(p, q, mu)
    terms = w_forward * p * (log_p - log_q) + (1 - w_forward) * q * (log_q - log_p)
    return _reduce(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


@torch.no_grad()
def adaptive_kl_weight(p: Tensor, q: Tensor, mu: float) -> Tensor:
    """AKL's forward-KL weight $g_\text{head} / (g_\text{head} + g_\text{tail})$ per position, ``[..., 1]``.

    The head is the smallest set of the teacher's most probable tokens whose mass reaches ``mu``
    (at least one token); the gaps are $|P - Q|$. A constant: no gradient flows through it.
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
    log_p, log_q, keep = _prepare(student_logits, teacher_logits, labels, temperature)
    log_ratio = log_p - log_q
    # Constants for the gradient: with them differentiated, the objective would be plain Jeffreys.
    w_forward = torch.sigmoid(log_ratio).detach()
    w_reverse = torch.sigmoid(-log_ratio).detach()
    terms = w_forward * log_p.exp() * log_ratio - w_reverse * log_q.exp() * log_ratio
    return _reduce(terms, keep, labels, temperature, scale_by_t2, reduction, num_items_in_batch)


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
    _check_labels(student_logits, labels)
    log_q = torch.log_softmax(_upcast(student_logits), dim=-1)
    targets = torch.where(labels == IGNORE_INDEX, 0, labels).unsqueeze(-1)
    nll = -log_q.gather(-1, targets).squeeze(-1)
    return _reduce_positions(nll, labels, reduction, num_items_in_batch)


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
    _check_unit_interval("alpha", alpha)
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
