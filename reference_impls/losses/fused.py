r"""Fused, chunked distillation losses from hidden states and LM-head weights.

At LLM vocabularies the logits are the memory problem of white-box KD: for $N$ tokens and
$V \approx 128$k entries, the student and teacher logits, their softmaxes and the logits gradient
are each $N \times V$ (8192 tokens at $V = 128256$ in float32: 4 GiB per tensor). This module
computes exactly the losses of `reference_impls.losses` without ever holding more than one chunk
of rows: for each chunk of $C$ tokens it forms the chunk's logits from the hidden states, computes
the loss *and* the gradient with respect to the student logits analytically, and immediately
pushes that gradient through the LM head (the approach of Liger-Kernel's fused linear losses).
The backward pass then only scales the stored gradients by `grad_output`.

## Conventions

The same as `reference_impls.losses` (read its module docstring): both logits divided by the
temperature $T$, log space in at least float32, teacher detached, ±inf logits masked, labels
already aligned (`-100` ignored), `"mean"` = sum over valid tokens divided by
$\max(n_\text{valid}, 1)$ or by `num_items_in_batch`, $T^2$ opt-in. The normaliser is global
(all valid tokens of the call, or `num_items_in_batch`), never per chunk. Matmuls run in the input
dtype (bf16 on GPU), softmax and log-space math in float32 (float64 stays float64), and the
LM-head weight gradient is accumulated in float32. `reduction="none"` is not offered: per-position
values need no fusion (use the reference losses).

## From the logits gradient to the LM head

`reference_impls.losses.fused_grads` gives, per chunk, the loss and its gradient $G$ with respect
to the student logits (the per-divergence formulas and their table live there). With $G$ already
divided by the global normaliser, the LM head's gradients are
$\nabla h_s = G W_s$, $\nabla W_s \mathrel{+}= G^\top h_s$, $\nabla b_s \mathrel{+}= \sum_\text{rows} G$,
accumulated chunk by chunk here.

The fused-linear technique follows Liger-Kernel (Hsu et al., 2024).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from reference_impls.losses.fused_grads import FUSED_DIVERGENCES, chunk_loss_and_grad
from reference_impls.losses.numerics import IGNORE_INDEX, VocabularyMismatchError, check_unit_interval

DEFAULT_MEMORY_BUDGET_BYTES = 512 * 2**20
"""Chunk temporaries allowed when neither `chunk_size` nor `memory_budget_bytes` is given (CPU)."""
DEFAULT_CUDA_MEMORY_BUDGET_BYTES = 3 * 2**30
"""The same on a GPU. Chosen from the H100 measurements in benchmarks/results/fused_loss_h100
(N = 8192, V = 128256, bf16, compiled): 512 MiB (64-row chunks) 347 ms eager, 2 GiB 63.5 ms and
1.63 GiB, 3 GiB 55.2 ms and 1.84 GiB, 4 GiB 50.9 ms and 2.17 GiB — small chunks starve the
matmuls, while the peak is dominated by the fp32 LM-head gradient (1 GiB here)."""

# Live [C, V] temporaries of the eager chunk kernel in the math dtype (logits upcast, log-probs,
# probabilities, mixture, the gradient...): a deliberately generous count, so a budget holds.
_MATH_TEMPORARIES = 12

_UNIT_INTERVAL_PARAMETERS = ("beta", "alpha", "mu")


def _resolve_divergence(name: str | None, kwargs: Mapping[str, Any]) -> str | None:
    if name is None:
        if kwargs:
            raise ValueError(f"divergence hyper-parameters {sorted(kwargs)} given without a divergence")
        return None
    key = name.strip().lower().replace("_", "-")
    if key not in FUSED_DIVERGENCES:
        raise KeyError(f"unknown divergence {name!r}; valid names: {', '.join(FUSED_DIVERGENCES)}")
    for parameter in _UNIT_INTERVAL_PARAMETERS:
        if parameter in kwargs:
            check_unit_interval(parameter, kwargs[parameter])
    return key


# --- the chunk kernel (`fused_grads.chunk_loss_and_grad`) with its settings bound ---------------------

ChunkKernel = Callable[[Tensor, Tensor | None, Tensor | None], tuple[Tensor, Tensor]]


@functools.lru_cache(maxsize=64)
def _chunk_kernel(compile: bool, **static: Any) -> ChunkKernel:
    """The chunk kernel with its static settings bound; compiled once per setting when asked."""
    kernel = functools.partial(chunk_loss_and_grad, **static)
    # dynamic=False: one graph for the full chunks and one for the last, shorter chunk.
    return torch.compile(kernel, dynamic=False) if compile else kernel


# --- chunk size and weight-gradient accumulation --------------------------------------------------


def choose_chunk_size(
    num_rows: int, vocab_size: int, logits_dtype: torch.dtype, memory_budget_bytes: int
) -> int:
    """Rows per chunk so that the chunk's `[C, V]` temporaries fit in `memory_budget_bytes`.

    Counts two logits tensors in `logits_dtype` plus `_MATH_TEMPORARIES` tensors in the math dtype
    (at least float32) per row; rounds down to a multiple of 64 (matmul-friendly) when possible.
    Always at least 1 row and at most `num_rows` (at least 1).
    """
    if memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be > 0, got {memory_budget_bytes}")
    math_itemsize = torch.promote_types(logits_dtype, torch.float32).itemsize
    itemsize = logits_dtype.itemsize
    bytes_per_row = vocab_size * (2 * itemsize + _MATH_TEMPORARIES * math_itemsize)
    rows = max(1, memory_budget_bytes // bytes_per_row)
    if rows >= 64:
        rows -= rows % 64
    return int(min(rows, max(num_rows, 1)))


@functools.lru_cache(maxsize=8)
def _has_fp32_out_addmm(device: torch.device) -> bool:
    """Whether `addmm(..., out_dtype=float32)` accumulates bf16 products into fp32 in place here."""
    try:
        acc = torch.zeros(2, 2, device=device)
        ones = torch.ones(2, 2, device=device, dtype=torch.bfloat16)
        torch.addmm(acc, ones, ones, out_dtype=torch.float32, out=acc)
        return bool(torch.all(acc == 2))
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _accumulate_product(acc: Tensor, left: Tensor, right: Tensor) -> None:
    """`acc += left @ right` with `acc` in float32 (or float64) and the matmul in the input dtype."""
    if left.dtype == acc.dtype:
        acc.addmm_(left, right)
    elif _has_fp32_out_addmm(acc.device):
        torch.addmm(acc, left, right, out_dtype=acc.dtype, out=acc)
    else:  # the product of one chunk is rounded once to the input dtype; the sum stays in fp32
        acc.add_(left @ right)


# --- the autograd function --------------------------------------------------------------------------


def _forward_chunks(
    student_hidden: Tensor,
    student_weight: Tensor,
    student_bias: Tensor | None,
    teacher_hidden: Tensor | None,
    teacher_weight: Tensor | None,
    teacher_bias: Tensor | None,
    labels: Tensor | None,
    kernel: ChunkKernel,
    math_dtype: torch.dtype,
    denominator: float,
    chunk_size: int,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Loss and the gradients of (hidden, weight, bias) for `loss / denominator`, chunk by chunk."""
    need_hidden, need_weight, need_bias = needs
    acc_dtype = torch.promote_types(student_weight.dtype, torch.float32)
    grad_weight = torch.zeros_like(student_weight, dtype=acc_dtype) if need_weight else None
    grad_bias = torch.zeros(student_weight.shape[0], dtype=acc_dtype, device=student_weight.device)
    total = torch.zeros((), dtype=math_dtype, device=student_hidden.device)

    # Masked positions contribute nothing: only the valid rows are ever multiplied.
    rows = None if labels is None else (labels != IGNORE_INDEX).nonzero().squeeze(1)
    if rows is not None and rows.numel() == labels.numel():
        rows = None  # every row is valid: slice, no gather copies
    grad_hidden = None
    if need_hidden:  # every row is written when all are valid
        grad_hidden = torch.empty_like(student_hidden) if rows is None else torch.zeros_like(student_hidden)
    hidden_s = student_hidden if rows is None else student_hidden.index_select(0, rows)
    hidden_t = (
        teacher_hidden if rows is None or teacher_hidden is None else teacher_hidden.index_select(0, rows)
    )
    targets = labels if rows is None or labels is None else labels.index_select(0, rows)
    num_valid = hidden_s.shape[0]

    for start in range(0, num_valid, chunk_size):
        stop = min(start + chunk_size, num_valid)
        chunk_s = hidden_s[start:stop]
        student_logits = torch.nn.functional.linear(chunk_s, student_weight, student_bias)
        teacher_logits = None
        if hidden_t is not None and teacher_weight is not None:
            teacher_logits = torch.nn.functional.linear(hidden_t[start:stop], teacher_weight, teacher_bias)
        value, grad_logits = kernel(
            student_logits, teacher_logits, None if targets is None else targets[start:stop]
        )
        del student_logits, teacher_logits
        total += value
        if not any(needs):
            continue
        grad_logits = grad_logits / denominator
        if need_bias:
            grad_bias += grad_logits.sum(0)
        grad_logits = grad_logits.to(student_weight.dtype)
        if grad_hidden is not None:
            chunk_grad = grad_logits @ student_weight
            if rows is None:
                grad_hidden[start:stop] = chunk_grad
            else:
                grad_hidden.index_copy_(0, rows[start:stop], chunk_grad)
        if grad_weight is not None:
            _accumulate_product(grad_weight, grad_logits.T, chunk_s)

    if grad_weight is not None:
        grad_weight = grad_weight.to(student_weight.dtype)  # frees the fp32 buffer for bf16 weights
    bias_grad = grad_bias.to(student_bias.dtype) if need_bias and student_bias is not None else None
    return total / denominator, grad_hidden, grad_weight, bias_grad


class _FusedLinearDivergence(torch.autograd.Function):
    """Loss forward that also computes the gradients; backward scales them by `grad_output`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student_hidden: Tensor,
        student_weight: Tensor,
        student_bias: Tensor | None,
        teacher_hidden: Tensor | None,
        teacher_weight: Tensor | None,
        teacher_bias: Tensor | None,
        labels: Tensor | None,
        kernel: ChunkKernel,
        math_dtype: torch.dtype,
        denominator: float,
        chunk_size: int,
    ) -> Tensor:
        needs = (
            student_hidden.requires_grad,
            student_weight.requires_grad,
            student_bias is not None and student_bias.requires_grad,
        )
        loss, *grads = _forward_chunks(
            student_hidden,
            student_weight,
            student_bias,
            teacher_hidden,
            teacher_weight,
            teacher_bias,
            labels,
            kernel,
            math_dtype,
            denominator,
            chunk_size,
            needs,
        )
        ctx.grads = grads  # not save_for_backward: these are our outputs, not inputs to re-check
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grads = ctx.grads
        ctx.grads = None
        # A loss used as is (grad_output == 1) returns the stored gradients without a copy.
        if not torch.equal(grad_output, torch.ones_like(grad_output)):
            grads = [None if g is None else g * grad_output.to(g.dtype) for g in grads]
        return (grads[0], grads[1], grads[2], None, None, None, None, None, None, None, None)


# --- the public API -----------------------------------------------------------------------------------


def _flatten_rows(name: str, tensor: Tensor | None) -> Tensor | None:
    if tensor is None:
        return None
    if tensor.dim() < 2:
        raise ValueError(f"{name} must be [N, H] or [B, T, H], got shape {tuple(tensor.shape)}")
    return tensor.reshape(-1, tensor.shape[-1])


def _check_head(name: str, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{name}_weight must be [V, H] with H = {name}_hidden.shape[-1] = {hidden.shape[-1]}, "
            f"got {tuple(weight.shape)}"
        )
    if hidden.dtype != weight.dtype:
        raise ValueError(f"{name}_hidden is {hidden.dtype} but {name}_weight is {weight.dtype}: cast one")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"{name}_bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")


def _denominator(
    labels: Tensor | None, num_rows: int, reduction: str, num_items_in_batch: int | Tensor | None
) -> float:
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"reduction must be 'mean' or 'sum', got {reduction!r} (for per-position values use "
            "reference_impls.losses, which needs no fusion)"
        )
    if num_items_in_batch is not None:
        if reduction != "mean":
            raise ValueError(
                f"num_items_in_batch replaces the 'mean' denominator; got reduction={reduction!r}"
            )
        return float(num_items_in_batch)
    if reduction == "sum":
        return 1.0
    valid = num_rows if labels is None else int((labels != IGNORE_INDEX).sum())
    return float(max(valid, 1))


def fused_linear_divergence(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor | None,
    teacher_weight: Tensor | None,
    labels: Tensor | None = None,
    divergence: str | None = "generalized_jsd",
    *,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    hard_label_weight: float = 0.0,
    reduction: Literal["mean", "sum"] = "mean",
    num_items_in_batch: int | Tensor | None = None,
    chunk_size: int | None = None,
    memory_budget_bytes: int | None = None,
    compile: bool = False,
    **divergence_kwargs: Any,
) -> Tensor:
    r"""$D(P \| Q) + w_\text{hard}\,\mathrm{CE}$ from hidden states, never materialising `[N, V]` logits.

    Equal (up to float rounding) to materialising $z_s = h_s W_s^\top + b_s$ and
    $z_t = h_t W_t^\top + b_t$ and calling `reference_impls.losses.get_divergence(divergence)(z_s,
    z_t, labels, ...)` plus `hard_label_weight * hard_label_ce(z_s, labels)`, with gradients for
    `student_hidden`, `student_weight` and `student_bias` (the teacher is detached).

    Args:
        student_hidden: `[N, Hs]` or `[B, T, Hs]` final hidden states of the student (after the
            final norm), ALREADY aligned with `labels`.
        student_weight: `[V, Hs]` student LM head.
        teacher_hidden: `[N, Ht]` or `[B, T, Ht]`; `None` only with `divergence=None`.
        teacher_weight: `[V, Ht]` teacher LM head; the same `V` as the student's.
        labels: `[N]` or `[B, T]`, `-100` ignored; `None` counts every position.
        divergence: a name of `reference_impls.losses.DIVERGENCES` (`_` or `-`), or `None` for
            the hard-label term alone (then `hard_label_weight` must be > 0).
        student_bias: `[V]` or `None`. teacher_bias: `[V]` or `None`.
        temperature: $T > 0$ of the divergence (the hard-label term is at $T = 1$).
        scale_by_t2: multiply the divergence by $T^2$.
        hard_label_weight: weight $w_\text{hard} \ge 0$ of the cross-entropy with `labels`.
        reduction: `"mean"` (per valid token) or `"sum"`.
        num_items_in_batch: the valid-token count of the whole accumulated batch; divides the sum.
        chunk_size: rows per chunk; `None` chooses it from `memory_budget_bytes`.
        memory_budget_bytes: bytes for the chunk temporaries (default
            `DEFAULT_MEMORY_BUDGET_BYTES`, `DEFAULT_CUDA_MEMORY_BUDGET_BYTES` on a GPU); used only
            when `chunk_size` is `None`.
        compile: `torch.compile` the per-chunk kernel (one compilation per setting and shape).
        **divergence_kwargs: the divergence's own hyper-parameter: `beta`, `alpha`, `mu` or `form`.

    Returns:
        A scalar in the math dtype (float32, or float64 for float64 inputs).

    Raises:
        VocabularyMismatchError: student and teacher heads have different `V`.
        KeyError: unknown divergence (the message lists the valid names).
        ValueError: shape or dtype mismatches, $T \le 0$, bad hyper-parameters, `reduction`.
    """
    key = _resolve_divergence(divergence, divergence_kwargs)
    if key is None and not hard_label_weight > 0:
        raise ValueError("divergence=None computes only the hard-label term: give hard_label_weight > 0")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not hard_label_weight >= 0:
        raise ValueError(f"hard_label_weight must be >= 0, got {hard_label_weight}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    hidden_shape = student_hidden.shape
    student_rows = _flatten_rows("student_hidden", student_hidden)
    assert student_rows is not None
    _check_head("student", student_rows, student_weight, student_bias)
    teacher_rows = None
    if key is not None:
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError(f"divergence {key!r} needs teacher_hidden and teacher_weight")
        if teacher_weight.shape[0] != student_weight.shape[0]:
            raise VocabularyMismatchError(student_weight.shape[0], teacher_weight.shape[0])
        teacher_rows = _flatten_rows("teacher_hidden", teacher_hidden.detach())
        assert teacher_rows is not None
        if teacher_rows.shape[0] != student_rows.shape[0] or teacher_hidden.shape[:-1] != hidden_shape[:-1]:
            raise ValueError(
                f"teacher_hidden {tuple(teacher_hidden.shape)} and student_hidden {tuple(hidden_shape)} "
                "must have the same leading (token) shape"
            )
        _check_head("teacher", teacher_rows, teacher_weight, teacher_bias)
    flat_labels = None
    if labels is not None:
        if labels.shape != hidden_shape[:-1]:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} must equal the hidden states' shape without the "
                f"hidden dimension, {tuple(hidden_shape[:-1])}; shift before calling"
            )
        flat_labels = labels.reshape(-1)
    elif hard_label_weight:
        raise ValueError("hard_label_weight > 0 needs labels")

    denominator = _denominator(flat_labels, student_rows.shape[0], reduction, num_items_in_batch)
    vocab = student_weight.shape[0]
    if chunk_size is None:
        budget = memory_budget_bytes
        if budget is None:
            on_gpu = student_weight.device.type == "cuda"
            budget = DEFAULT_CUDA_MEMORY_BUDGET_BYTES if on_gpu else DEFAULT_MEMORY_BUDGET_BYTES
        chunk_size = choose_chunk_size(student_rows.shape[0], vocab, student_weight.dtype, budget)
    math_dtype = torch.promote_types(student_weight.dtype, torch.float32)
    if teacher_weight is not None:
        math_dtype = torch.promote_types(math_dtype, teacher_weight.dtype)
    kernel = _chunk_kernel(
        compile,
        divergence=key,
        hyperparameters=tuple(sorted(divergence_kwargs.items())),
        temperature=float(temperature),
        scale_by_t2=scale_by_t2,
        hard_label_weight=float(hard_label_weight),
        math_dtype=math_dtype,
    )
    return _FusedLinearDivergence.apply(
        student_rows,
        student_weight,
        student_bias,
        teacher_rows,
        None if teacher_weight is None else teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(),
        flat_labels,
        kernel,
        math_dtype,
        denominator,
        chunk_size,
    )


def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    reduction: Literal["mean", "sum"] = "mean",
    num_items_in_batch: int | Tensor | None = None,
    chunk_size: int | None = None,
    memory_budget_bytes: int | None = None,
    compile: bool = False,
) -> Tensor:
    """`losses.hard_label_ce` of `hidden @ weight.T + bias` without the `[N, V]` logits.

    Arguments as in `fused_linear_divergence` (student side only).
    """
    return fused_linear_divergence(
        hidden,
        weight,
        None,
        None,
        labels,
        None,
        student_bias=bias,
        hard_label_weight=1.0,
        reduction=reduction,
        num_items_in_batch=num_items_in_batch,
        chunk_size=chunk_size,
        memory_budget_bytes=memory_budget_bytes,
        compile=compile,
    )
