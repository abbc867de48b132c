"""Tests for `reference_impls.losses.fused`: the fused, chunked losses equal the reference path.

The reference path materialises the logits ``h @ W.T + b`` and calls `reference_impls.losses`;
autograd of it gives the gradients the fused analytic ones must match (float64: to rounding).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from reference_impls import losses
from reference_impls.losses import DIVERGENCES, IGNORE_INDEX, VocabularyMismatchError
from reference_impls.losses.fused import (
    FUSED_DIVERGENCES,
    choose_chunk_size,
    fused_linear_cross_entropy,
    fused_linear_divergence,
)

N, HS, HT, V = 23, 6, 10, 37  # N is prime: no chunk size below divides it


def _inputs(
    dtype: torch.dtype = torch.float64, n: int = N, vocab: int = V, seed: int = 0, masked: bool = True
) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)

    labels = torch.randint(0, vocab, (n,), generator=generator)
    if masked:
        labels[::4] = IGNORE_INDEX
    return {
        "student_hidden": randn(n, HS).requires_grad_(),
        "student_weight": randn(vocab, HS, scale=0.7).requires_grad_(),
        "student_bias": randn(vocab, scale=0.3).requires_grad_(),
        "teacher_hidden": randn(n, HT),
        "teacher_weight": randn(vocab, HT, scale=0.7),
        "teacher_bias": randn(vocab, scale=0.3),
        "labels": labels,
    }


def _student_params(x: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    return x["student_hidden"], x["student_weight"], x["student_bias"]


def _reference(
    x: dict[str, Tensor], divergence: str | None, hard_label_weight: float = 0.0, **kwargs: Any
) -> Tensor:
    """Materialised logits through `reference_impls.losses` (the readable path)."""
    student_logits = x["student_hidden"] @ x["student_weight"].T + x["student_bias"]
    labels = x["labels"]
    loss = student_logits.new_zeros((), dtype=torch.promote_types(student_logits.dtype, torch.float32))
    mean_kwargs = {k: v for k, v in kwargs.items() if k in ("reduction", "num_items_in_batch")}
    if divergence is not None:
        teacher_logits = x["teacher_hidden"] @ x["teacher_weight"].T + x["teacher_bias"]
        loss = loss + losses.get_divergence(divergence)(student_logits, teacher_logits, labels, **kwargs)
    if hard_label_weight:
        loss = loss + hard_label_weight * losses.hard_label_ce(student_logits, labels, **mean_kwargs)
    return loss


def _fused(x: dict[str, Tensor], divergence: str | None, **kwargs: Any) -> Tensor:
    return fused_linear_divergence(
        x["student_hidden"],
        x["student_weight"],
        x["teacher_hidden"],
        x["teacher_weight"],
        x["labels"],
        divergence,
        student_bias=x["student_bias"],
        teacher_bias=x["teacher_bias"],
        **kwargs,
    )


def _assert_same(
    x: dict[str, Tensor], reference: Tensor, fused: Tensor, rtol: float = 1e-10, atol: float = 1e-12
) -> None:
    params = _student_params(x)
    # (skew FKL at alpha = 1 is the constant 0: the reference then has no graph)
    expected = (
        torch.autograd.grad(reference, params, allow_unused=True) if reference.requires_grad else (None,) * 3
    )
    got = torch.autograd.grad(fused, params, allow_unused=True)
    torch.testing.assert_close(fused, reference, rtol=rtol, atol=atol)
    for name, e, g in zip(("hidden", "weight", "bias"), expected, got, strict=True):
        e = torch.zeros_like(g) if e is None else e
        assert g.dtype == e.dtype, name
        scale = e.abs().max().clamp_min(1e-30)
        torch.testing.assert_close(g / scale, e / scale, rtol=rtol, atol=atol, msg=name)


HYPERPARAMETERS: list[tuple[str, dict[str, Any]]] = [
    ("forward-kl", {}),
    ("forward_kl", {"form": "ce"}),
    ("reverse-kl", {}),
    ("generalized-jsd", {"beta": 0.5}),
    ("generalized-jsd", {"beta": 0.1}),
    ("generalized-jsd", {"beta": 0.0}),
    ("generalized-jsd", {"beta": 1.0}),
    ("total-variation", {}),
    ("skew-forward-kl", {"alpha": 0.1}),
    ("skew-forward-kl", {"alpha": 0.0}),
    ("skew-forward-kl", {"alpha": 1.0}),
    ("skew-reverse-kl", {"alpha": 0.1}),
    ("skew-reverse-kl", {"alpha": 0.0}),
    ("skew-reverse-kl", {"alpha": 1.0}),
    ("adaptive-kl", {"mu": 0.5}),
    ("adaptive-kl", {"mu": 0.05}),
    ("todi", {}),
]


def test_every_divergence_of_the_loss_api_has_a_fused_form() -> None:
    assert set(FUSED_DIVERGENCES) == set(DIVERGENCES)


@pytest.mark.parametrize(("divergence", "hyper"), HYPERPARAMETERS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_value_and_gradients_equal_reference_float64(
    divergence: str, hyper: dict[str, Any], temperature: float
) -> None:
    x = _inputs()
    reference = _reference(x, divergence, temperature=temperature, **hyper)
    fused = _fused(x, divergence, temperature=temperature, chunk_size=4, **hyper)
    _assert_same(x, reference, fused)


@pytest.mark.convention("temperature-squared")
@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_with_hard_label_term_t2_and_batched_shapes(divergence: str) -> None:
    x = _inputs()
    batched = {
        k: v.detach().reshape(N, 1, -1) if v.dim() == 2 and k.endswith("hidden") else v for k, v in x.items()
    }
    batched["labels"] = x["labels"].reshape(N, 1)
    reference = _reference(x, divergence, hard_label_weight=0.7, temperature=2.0, scale_by_t2=True)
    # the [B, T, H] input is a different leaf: compare its gradient reshaped
    expected = torch.autograd.grad(reference, _student_params(x))
    batched["student_hidden"].requires_grad_()
    fused = _fused(
        batched, divergence, hard_label_weight=0.7, temperature=2.0, scale_by_t2=True, chunk_size=7
    )
    got = torch.autograd.grad(fused, _student_params(batched))
    torch.testing.assert_close(fused, reference.detach(), rtol=1e-10, atol=1e-12)
    assert got[0].shape == (N, 1, HS)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g.reshape(e.shape), e, rtol=1e-10, atol=1e-12)


def test_hard_label_term_alone() -> None:
    x = _inputs()
    reference = _reference(x, None, hard_label_weight=1.0)
    _assert_same(x, reference, _fused(x, None, hard_label_weight=1.0, chunk_size=5))
    x = _inputs()
    reference = _reference(x, None, hard_label_weight=1.0)
    fused = fused_linear_cross_entropy(
        x["student_hidden"], x["student_weight"], x["labels"], bias=x["student_bias"], chunk_size=3
    )
    _assert_same(x, reference, fused)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 22, 23, 24, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size: int) -> None:
    x = _inputs()
    reference = _reference(x, "generalized-jsd", beta=0.3)
    _assert_same(x, reference, _fused(x, "generalized-jsd", beta=0.3, chunk_size=chunk_size))


def test_no_labels_counts_every_position_and_sum_reduction() -> None:
    x = _inputs()
    x["labels"] = None  # type: ignore[assignment]
    reference = _reference(x, "reverse-kl", reduction="sum")
    _assert_same(x, reference, _fused(x, "reverse-kl", reduction="sum", chunk_size=6))
    x = _inputs()
    x["labels"] = None  # type: ignore[assignment]
    _assert_same(x, _reference(x, "total-variation"), _fused(x, "total-variation", chunk_size=6))


def test_all_masked_gives_zero_loss_and_zero_gradients() -> None:
    x = _inputs()
    x["labels"] = torch.full((N,), IGNORE_INDEX)
    fused = _fused(x, "generalized-jsd", hard_label_weight=1.0, chunk_size=4)
    assert fused.item() == 0.0
    for grad in torch.autograd.grad(fused, _student_params(x)):
        assert torch.count_nonzero(grad) == 0


@pytest.mark.convention("minus-inf-logits")
def test_infinite_logits_are_masked_like_the_reference() -> None:
    """A -inf shared by both heads (padded vocabulary) and a -inf in the teacher only."""
    x = _inputs()
    teacher_bias = x["teacher_bias"].clone()
    student_bias = x["student_bias"].detach().clone()
    teacher_bias[[3, 11]] = float("-inf")
    student_bias[3] = float("-inf")
    x["teacher_bias"], x["student_bias"] = teacher_bias, student_bias.requires_grad_()
    for divergence in DIVERGENCES:
        reference = _reference(x, divergence)
        fused = _fused(x, divergence, chunk_size=5)
        assert torch.isfinite(fused)
        _assert_same(x, reference, fused)


@pytest.mark.convention("accumulation-normaliser")
def test_gradient_accumulation_with_num_items_in_batch() -> None:
    """Two half-batches divided by the whole batch's token count sum to the one-batch loss."""
    x = _inputs(n=24)
    full = _fused(x, "skew-reverse-kl", alpha=0.2, chunk_size=5)
    full_grads = torch.autograd.grad(full, _student_params(x))
    total_tokens = int((x["labels"] != IGNORE_INDEX).sum())
    summed = torch.zeros((), dtype=torch.float64)
    for half in (slice(0, 11), slice(11, 24)):  # uneven halves with different valid counts
        part = {
            k: v[half] if k in ("student_hidden", "teacher_hidden", "labels") else v for k, v in x.items()
        }
        loss = _fused(part, "skew-reverse-kl", alpha=0.2, chunk_size=5, num_items_in_batch=total_tokens)
        summed = summed + loss.detach()
        loss.backward()
    grads = [p.grad for p in _student_params(x)]
    torch.testing.assert_close(summed, full.detach(), rtol=1e-12, atol=1e-14)
    for g, e in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


def test_grad_output_scales_the_stored_gradients() -> None:
    x = _inputs()
    once = torch.autograd.grad(_fused(x, "forward-kl", chunk_size=4), _student_params(x))
    twice = torch.autograd.grad(2.5 * _fused(x, "forward-kl", chunk_size=4), _student_params(x))
    for a, b in zip(once, twice, strict=True):
        torch.testing.assert_close(b, 2.5 * a)


def test_loss_only_under_no_grad_and_frozen_student() -> None:
    x = _inputs()
    expected = _reference(x, "adaptive-kl").detach()
    with torch.no_grad():
        torch.testing.assert_close(_fused(x, "adaptive-kl", chunk_size=4), expected)
    frozen = {k: v.detach() for k, v in x.items()}
    torch.testing.assert_close(_fused(frozen, "adaptive-kl"), expected)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-3)])
@pytest.mark.parametrize("divergence", ["generalized-jsd", "reverse-kl", "adaptive-kl"])
def test_low_precision_is_as_accurate_as_the_reference_path(
    dtype: torch.dtype, rtol: float, divergence: str
) -> None:
    """Against float64 truth on the same rounded inputs, the fused gradients are no less accurate
    than the materialised-logits path in the same dtype (both round the logits gradient)."""
    x = _inputs(dtype, n=40, vocab=300)
    exact = {
        k: v.detach().double().requires_grad_(v.requires_grad) for k, v in x.items() if v.is_floating_point()
    }
    exact["labels"] = x["labels"]
    truth = _reference(exact, divergence)
    truth_grads = torch.autograd.grad(truth, _student_params(exact))
    reference = _reference(x, divergence)
    fused = _fused(x, divergence, chunk_size=16)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused.double(), truth, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(fused, reference, rtol=rtol, atol=1e-6)
    reference_grads = torch.autograd.grad(reference, _student_params(x))
    fused_grads = torch.autograd.grad(fused, _student_params(x))
    for t, r, f in zip(truth_grads, reference_grads, fused_grads, strict=True):
        assert f.dtype == dtype
        scale = t.abs().max()
        fused_error = ((f.double() - t).abs().max() / scale).item()
        reference_error = ((r.double() - t).abs().max() / scale).item()
        assert fused_error <= max(2 * reference_error, 1e-6), (fused_error, reference_error)


def test_automatic_chunk_size_from_a_memory_budget() -> None:
    # float32 logits, V = 1000: (2*4 + 12*4) * 1000 = 56 kB per row
    assert choose_chunk_size(10_000, 1000, torch.float32, 56_000 * 100) == 64  # 100 → multiple of 64
    assert choose_chunk_size(10_000, 1000, torch.float32, 56_000 * 10) == 10
    assert choose_chunk_size(10_000, 1000, torch.float32, 1) == 1
    assert choose_chunk_size(7, 1000, torch.float32, 2**40) == 7
    assert choose_chunk_size(10_000, 1000, torch.bfloat16, 52_000 * 10) == 10
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        choose_chunk_size(10, 10, torch.float32, 0)
    # a budget that allows 3 rows gives the same result as explicit chunks
    x = _inputs()
    budget = 3 * V * (2 * 8 + 12 * 8)
    _assert_same(x, _reference(x, "forward-kl"), _fused(x, "forward-kl", memory_budget_bytes=budget))


def test_errors_are_clear() -> None:
    x = _inputs()
    with pytest.raises(VocabularyMismatchError, match="cross-tokenizer"):
        _fused({**x, "teacher_weight": x["teacher_weight"][:-1], "teacher_bias": None}, "forward-kl")
    with pytest.raises(KeyError, match="valid names: forward-kl, reverse-kl"):
        _fused(x, "jensen")
    with pytest.raises(ValueError, match="student_weight must be"):
        _fused({**x, "student_weight": x["student_weight"][:, :-1]}, "forward-kl")
    with pytest.raises(ValueError, match="same leading"):
        _fused({**x, "teacher_hidden": x["teacher_hidden"][:-1]}, "forward-kl")
    with pytest.raises(ValueError, match="labels shape"):
        _fused({**x, "labels": x["labels"][:-1]}, "forward-kl")
    with pytest.raises(ValueError, match="teacher_bias must be"):
        _fused({**x, "teacher_bias": x["teacher_bias"][:-1]}, "forward-kl")
    with pytest.raises(ValueError, match="cast one"):
        _fused({**x, "teacher_hidden": x["teacher_hidden"].float()}, "forward-kl")
    with pytest.raises(ValueError, match="reduction"):
        _fused(x, "forward-kl", reduction="none")
    with pytest.raises(ValueError, match="num_items_in_batch"):
        _fused(x, "forward-kl", reduction="sum", num_items_in_batch=3)
    with pytest.raises(ValueError, match="temperature"):
        _fused(x, "forward-kl", temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        _fused(x, "generalized-jsd", beta=1.5)
    with pytest.raises(ValueError, match="hard_label_weight > 0"):
        _fused(x, None)
    with pytest.raises(ValueError, match="needs labels"):
        _fused({**x, "labels": None}, "forward-kl", hard_label_weight=1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        _fused(x, "forward-kl", chunk_size=0)
    with pytest.raises(TypeError):
        _fused(x, "forward-kl", beta=0.5)  # not forward KL's hyper-parameter


@pytest.mark.slow
def test_compiled_kernel_matches_eager() -> None:
    x = _inputs(torch.float32, n=40, vocab=64)
    eager = _fused(x, "generalized-jsd", chunk_size=16)
    compiled = _fused(x, "generalized-jsd", chunk_size=16, compile=True)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(
        torch.autograd.grad(eager, _student_params(x)),
        torch.autograd.grad(compiled, _student_params(x)),
        strict=True,
    ):
        torch.testing.assert_close(a, b)
