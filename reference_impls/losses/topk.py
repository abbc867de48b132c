r"""The KL between a stored teacher top-k and the student (offline distillation's loss).

The teacher's top-k log-probs per position come from `reference_impls.teachers.topk` (computed once,
stored in safetensors); this module is the math of training from them.

## What top-k truncation changes

Let $S$ be the stored top-k set at one position, $P$ the teacher and $Q$ the student (both at
temperature $T$, normalised over the full vocabulary), $m = \sum_{v \in S} P_v$ the teacher's kept
mass and $r = \sum_{v \in S} Q_v$ the student's mass on $S$. The full forward KL needs $P_v$ outside
$S$, which is gone; `topk_divergence` offers three ways to handle the missing tail mass $1 - m$:

- `"zero"`: $\sum_{v \in S} P_v \log(P_v / Q_v)$ with the stored (unnormalised) $P_v$, i.e. the
  teacher's tail is treated as absent. Equal to $m\,L_\text{renormalize} + m \log m$: the same
  minimiser as `"renormalize"` and the gradient scaled by $m$; the value can be negative (it is
  $\ge m \log(m/r)$). Used by verl's `forward_kl_topk` and EasyDistill's old `kd/` `forward_kld`.
- `"renormalize"`: the teacher is renormalised over $S$, $\tilde P_v = P_v / m$, and
  $\mathrm{KL}(\tilde P \| Q) = \sum_{v \in S} \tilde P_v \log(\tilde P_v / Q_v)$ with the student
  normalised over the full vocabulary. It is a true KL, $\ge 0$, minimised at $Q = \tilde P$:
  the student is pushed to put **zero** mass outside $S$ (over-confident on the head). Neither
  bound of the full KL. DistillKit's `MissingProbabilityHandling.ZERO` is this (its
  `get_target_logprobs` renormalises the top-k). TRL `server_distillation` without
  `loss_add_tail` renormalises the student over $S$ too, giving
  $\mathrm{KL}(\tilde P \| Q|_S) = L_\text{renormalize} + \log r$, which ignores the student's tail.
- `"residual"` (default): one extra bucket holds the mass outside $S$ for both models,
  $\sum_{v \in S} P_v \log(P_v / Q_v) + (1-m)\log\frac{1-m}{1-r}$. This is the exact KL between the
  two distributions coarse-grained to $k + 1$ outcomes, so by the data-processing inequality it is
  $\le \mathrm{KL}(P \| Q)$; the chain rule gives the gap exactly,
  $\mathrm{KL}(P\|Q) = L_\text{residual} + (1-m)\,\mathrm{KL}(P(\cdot|\bar S) \| Q(\cdot|\bar S))$:
  it matches the head and the tail's total mass, and leaves the tail's *shape* free. DistillKit's
  `SYMMETRIC_UNIFORM`, TRL `server_distillation` with `loss_add_tail=True` (its default) and verl's
  SDPO `tail="add"` do this. Unlike them, the student's tail $\log(1 - r)$ is a log-sum-exp over the
  logits outside $S$ (no cancellation when $r \to 1$, exact gradient), and the teacher's tail is the
  stored `tail_logmass` rather than $1 - \sum \exp(\text{stored})$, which fp16 rounding would bias.

When $k = V$ the three coincide and equal `reference_impls.losses.forward_kl` ($m = 1$, the tail is
empty). Reverse KL $\mathrm{KL}(Q \| P)$ is only defined with `"residual"` (the coarse-grained
$\mathrm{KL}(Q \circ \pi \| P \circ \pi) \le \mathrm{KL}(Q \| P)$, gap
$(1-r)\,\mathrm{KL}(Q(\cdot|\bar S) \| P(\cdot|\bar S))$): with the other two the teacher puts
zero mass outside $S$, and $\mathrm{KL}(Q\|P) = \infty$ whenever the student does not (EasyDistill
clamps $P$ at $10^{-10}$ instead, a large arbitrary penalty).

**Temperature.** The stored log-probs are $\log\mathrm{softmax}(z_t / T)$ at the $T$ given to
`precompute_topk`; train with the same $T$ (`load_topk(..., temperature=T)` checks it). Changing
$T$ afterwards is not exact from a top-k (DistillKit re-tempers with $P_v^{\alpha}$ and treats the
tail as one token), so it is refused here: precompute again. The top-k *set* itself does not
depend on $T$. **Storage**: float16 log-probs halve the file; each stored probability then carries
a relative error up to $|\log P_v| \cdot 2^{-11}$ (1 % at $P_v = e^{-20}$); float32 is the default.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from reference_impls.losses.numerics import Reduction, finite_log_softmax, reduce_positions

Tail = Literal["zero", "renormalize", "residual"]
TopKDivergence = Literal["forward_kl", "reverse_kl"]


def _kl_terms(log_a: Tensor, log_b: Tensor) -> Tensor:
    r"""Elementwise $a \log(a/b)$ from log-probabilities."""
    return log_a.exp() * (log_a - log_b)


def _teacher_tail(topk_logprobs: Tensor) -> Tensor:
    r"""$\log(1 - \sum_k P_k)$ from the stored values alone (0 mass when they already sum to >= 1)."""
    kept = topk_logprobs.logsumexp(-1).clamp(max=0.0)
    return torch.log(-torch.expm1(kept))


def topk_divergence(
    student_logits: Tensor,
    topk_indices: Tensor,
    topk_logprobs: Tensor,
    labels: Tensor | None = None,
    *,
    divergence: TopKDivergence = "forward_kl",
    tail: Tail = "residual",
    temperature: float = 1.0,
    teacher_tail_logmass: Tensor | None = None,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    r"""KL between a stored teacher top-k and the student, with the teacher's tail handled by `tail`.

    With $S$ the top-k ids, $m = \sum_S P_v$, $r = \sum_S Q_v$ and $Q = \mathrm{softmax}(z_s/T)$:

    - `"zero"`: $\sum_{v \in S} P_v \log(P_v/Q_v)$;
    - `"renormalize"`: $\sum_{v \in S} \tilde P_v \log(\tilde P_v/Q_v)$, $\tilde P_v = P_v/m$;
    - `"residual"`: $\sum_{v \in S} P_v \log(P_v/Q_v) + (1-m)\log\frac{1-m}{1-r}$ (forward) or
      $\sum_{v \in S} Q_v \log(Q_v/P_v) + (1-r)\log\frac{1-r}{1-m}$ (reverse, `"residual"` only).

    All three equal `losses.forward_kl` when $k = V$; see the module docstring for their biases.
    Conventions as in `reference_impls.losses` (aligned labels, -100 ignored, per-token mean, fp32,
    teacher detached, opt-in $T^2$, ±inf entries masked).

    Args:
        student_logits: `[..., V]` student logits (gradients flow here).
        topk_indices: `[..., k]` teacher top-k token ids.
        topk_logprobs: `[..., k]` teacher log-probs at $T$ (normalised over the full vocabulary).
        labels: `[...]` labels ALREADY aligned with the logits; -100 ignored; None counts all.
        divergence: `"forward_kl"` ($\mathrm{KL}(P\|Q)$) or `"reverse_kl"` ($\mathrm{KL}(Q\|P)$).
        tail: `"zero"`, `"renormalize"` or `"residual"`.
        temperature: $T > 0$ applied to the student; must be the $T$ the top-k was stored at.
        teacher_tail_logmass: `[...]` stored $\log(1-m)$; if None it is derived from `topk_logprobs`
            (less exact after fp16 storage). Only `"residual"` uses it.
        scale_by_t2: multiply by $T^2$ (opt-in).
        reduction: `"mean"`, `"sum"` or `"none"`.
        num_items_in_batch: if given, the sum is divided by it instead of the valid-token count.

    Raises:
        ValueError: bad shapes, $T \le 0$, unknown `divergence`/`tail`, reverse KL without
            `"residual"`, or a token id outside the student's vocabulary.
    """
    if divergence not in ("forward_kl", "reverse_kl"):
        raise ValueError(f"divergence must be 'forward_kl' or 'reverse_kl', got {divergence!r}")
    if tail not in ("zero", "renormalize", "residual"):
        raise ValueError(f"tail must be 'zero', 'renormalize' or 'residual', got {tail!r}")
    if divergence == "reverse_kl" and tail != "residual":
        raise ValueError(
            f"reverse KL with tail={tail!r} is infinite whenever the student puts mass outside the teacher's "
            "top-k (the teacher has none there); use tail='residual' (exact KL over top-k + one tail bucket)"
        )
    _check_shapes(student_logits, topk_indices, topk_logprobs, labels, teacher_tail_logmass)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_q_full = finite_log_softmax(student_logits.to(dtype) / temperature)
    log_q = log_q_full.gather(-1, topk_indices.long())
    log_p = topk_logprobs.detach().to(dtype)
    if tail == "renormalize":
        log_p = log_p - log_p.logsumexp(-1, keepdim=True)
    # A token with -inf on either side contributes 0 (the losses.py convention).
    keep = torch.isfinite(log_p) & (log_q > torch.finfo(dtype).min / 2)
    log_p, log_q = torch.where(keep, log_p, 0.0), torch.where(keep, log_q, 0.0)
    forward = divergence == "forward_kl"
    terms = _kl_terms(log_p, log_q) if forward else _kl_terms(log_q, log_p)
    per_position = torch.where(keep, terms, 0.0).sum(-1)

    if tail == "residual":
        if teacher_tail_logmass is None:
            teacher_tail_logmass = _teacher_tail(topk_logprobs.detach().to(dtype))
        log_p_tail = teacher_tail_logmass.detach().to(dtype)
        # The student's mass outside S straight from its logits: stable as r -> 1, exact gradient.
        outside = log_q_full.scatter(-1, topk_indices.long(), torch.finfo(dtype).min)
        log_q_tail = outside.logsumexp(-1)
        has_tail = torch.isfinite(log_p_tail) & (log_q_tail > torch.finfo(dtype).min / 2)
        log_p_tail = torch.where(has_tail, log_p_tail, 0.0)
        log_q_tail = torch.where(has_tail, log_q_tail, 0.0)
        tail_term = _kl_terms(log_p_tail, log_q_tail) if forward else _kl_terms(log_q_tail, log_p_tail)
        per_position = per_position + torch.where(has_tail, tail_term, 0.0)

    if scale_by_t2:
        per_position = per_position * temperature**2
    return reduce_positions(per_position, labels, reduction, num_items_in_batch)


def _check_shapes(
    student_logits: Tensor,
    topk_indices: Tensor,
    topk_logprobs: Tensor,
    labels: Tensor | None,
    teacher_tail_logmass: Tensor | None,
) -> None:
    positions = tuple(student_logits.shape[:-1])
    if topk_indices.shape != topk_logprobs.shape or tuple(topk_indices.shape[:-1]) != positions:
        raise ValueError(
            f"topk_indices {tuple(topk_indices.shape)} and topk_logprobs {tuple(topk_logprobs.shape)} must "
            f"both be {positions} + (k,), aligned with the student logits {tuple(student_logits.shape)} "
            "(look them up with the shifted labels, labels[:, 1:])"
        )
    for name, tensor in (("labels", labels), ("teacher_tail_logmass", teacher_tail_logmass)):
        if tensor is not None and tuple(tensor.shape) != positions:
            raise ValueError(
                f"{name} shape {tuple(tensor.shape)} must be {positions} (shift before calling: "
                "logits[:, :-1] with labels[:, 1:])"
            )
    if topk_indices.numel() and int(topk_indices.max()) >= student_logits.shape[-1]:
        raise ValueError(
            f"teacher top-k token id {int(topk_indices.max())} is outside the student's vocabulary of "
            f"{student_logits.shape[-1]}: the top-k was stored for a larger vocabulary. Use a student with "
            "the teacher's tokenizer (or a cross-tokenizer method: `uld`, `dskd`)."
        )
