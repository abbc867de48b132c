r"""Numerics shared by every loss: input checks, finite log-probabilities, log-space mixtures
and the one reduction convention (see `reference_impls.losses` for the conventions themselves).

Public so that the fused, cross-tokenizer and top-k losses build on exactly the same pieces.
"""

from __future__ import annotations

import math
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


def check_in_range(name: str, value: float, low: float, high: float, *, open_low: bool = False) -> None:
    """Raise ``ValueError("{name} must be in [low, high], got value")`` unless ``value`` is in
    ``[low, high]`` (``(low, high]`` with ``open_low``): the one range check of every hyper-parameter."""
    inside = (low < value if open_low else low <= value) and value <= high  # also rejects NaN
    if not inside:
        raise ValueError(f"{name} must be in {'(' if open_low else '['}{low:g}, {high:g}], got {value}")


def check_unit_interval(name: str, value: float) -> None:
    """``value`` is a probability or a mixture weight: in [0, 1]."""
    check_in_range(name, value, 0.0, 1.0)


def check_labels(logits: Tensor, labels: Tensor | None) -> None:
    if labels is not None and labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal the logits shape without the vocabulary "
            f"dimension, {tuple(logits.shape[:-1])}. Labels must already be aligned with the logits: "
            "shift before calling (e.g. logits[:, :-1] with labels[:, 1:])."
        )


def upcast(logits: Tensor) -> Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def finite_log_softmax(logits: Tensor) -> Tensor:
    # exp(finfo.min - max) underflows to exactly 0, so a -inf entry keeps zero mass, while every
    # intermediate stays finite and no NaN can reach the backward pass.
    return torch.log_softmax(logits.masked_fill(logits.isinf(), torch.finfo(logits.dtype).min), dim=-1)


def prepare_log_probs(
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
    check_labels(student_logits, labels)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(
        torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32
    )
    student = student_logits.to(dtype) / temperature
    teacher = teacher_logits.detach().to(dtype) / temperature
    keep = ~(student.isinf() | teacher.isinf())
    log_p = torch.where(keep, finite_log_softmax(teacher), 0.0)
    log_q = torch.where(keep, finite_log_softmax(student), 0.0)
    return log_p, log_q, keep


def log_mixture(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    r"""$\log(w\,a + (1-w)\,b)$ in log space; exact at $w \in \{0, 1\}$."""
    if weight == 0.0:
        return log_b
    if weight == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(weight), log_b + math.log1p(-weight))


def reduce_positions(
    per_position: Tensor,
    labels: Tensor | None,
    reduction: Reduction,
    num_items_in_batch: int | Tensor | None,
) -> Tensor:
    valid = torch.ones_like(per_position, dtype=torch.bool) if labels is None else labels != IGNORE_INDEX
    return reduce_valid(per_position, valid, reduction, num_items_in_batch)


def reduce_valid(
    per_position: Tensor, valid: Tensor, reduction: Reduction, num_items_in_batch: int | Tensor | None = None
) -> Tensor:
    """The one reduction: zero the positions ``valid`` drops, then ``"none"`` (those values),
    ``"sum"``, or ``"mean"`` over the valid positions (over ``num_items_in_batch`` when given)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if num_items_in_batch is not None and reduction != "mean":
        raise ValueError(f"num_items_in_batch replaces the 'mean' denominator; got reduction={reduction!r}")
    per_position = torch.where(valid, per_position, 0.0)
    if reduction == "none":
        return per_position
    total = per_position.sum()
    if reduction == "sum":
        return total
    if num_items_in_batch is not None:
        return total / num_items_in_batch
    return total / valid.sum().clamp_min(1)


def reduce_terms(
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
    return reduce_positions(per_position, labels, reduction, num_items_in_batch)
