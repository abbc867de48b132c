"""Tests for ToDi (`reference_impls.losses.todi`) and its fused form; the `todi` recipe is tested with
the other word-level recipes in tests/white_box/logits/test_word_level.py.

The references here never call the module under test: a pure-Python float64 loop over the
vocabulary (golden values), the paper's sigmoid-weighted formula in float64 torch, and a surrogate
whose per-entry weights are fixed numbers (what "detached" means for the gradient).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from reference_impls.losses import (
    IGNORE_INDEX,
    VocabularyMismatchError,
    forward_kl,
    get_divergence,
    hard_label_ce,
    reverse_kl,
    todi,
)
from reference_impls.losses.fused import FUSED_DIVERGENCES, fused_linear_divergence

# --- independent references ----------------------------------------------------------------------


def _softmax_row(logits: list[float], temperature: float) -> list[float]:
    scaled = [z / temperature for z in logits]
    top = max(scaled)
    exps = [math.exp(z - top) for z in scaled]
    return [e / sum(exps) for e in exps]


def python_todi(student: list[float], teacher: list[float], temperature: float = 1.0) -> float:
    """The paper's per-position ToDi, one vocabulary entry at a time, in Python floats."""
    p, q = _softmax_row(teacher, temperature), _softmax_row(student, temperature)
    total = 0.0
    for p_v, q_v in zip(p, q, strict=True):
        ratio = math.log(p_v / q_v)
        w = 1.0 / (1.0 + math.exp(-ratio))
        total += w * p_v * ratio + (1.0 - w) * q_v * -ratio
    return total


def surrogate(student: Tensor, teacher: Tensor, w: Tensor, temperature: float = 1.0) -> Tensor:
    """ToDi per position with the weights `w` as given numbers: its gradient is ToDi's."""
    log_q = torch.log_softmax(student / temperature, -1)
    log_p = torch.log_softmax(teacher / temperature, -1)
    fkl = log_p.exp() * (log_p - log_q)
    rkl = log_q.exp() * (log_q - log_p)
    return (w * fkl + (1 - w) * rkl).sum(-1)


def paper_weights(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    log_q = torch.log_softmax(student.detach() / temperature, -1)
    log_p = torch.log_softmax(teacher / temperature, -1)
    return torch.sigmoid(log_p - log_q)


def make_inputs(
    shape: tuple[int, ...] = (2, 3, 6), seed: int = 0, scale: float = 2.0, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    teacher = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    labels.view(-1)[0] = IGNORE_INDEX
    return student, teacher, labels


# --- golden values ---------------------------------------------------------------------------------

# Written once by `python_todi` (pure Python floats, no torch); re-derived separately as the
# Jeffreys sum of (P - Q) log(P/Q).
GOLDEN_STUDENT = [[0.0, 1.0, -1.0, 2.0], [0.5, -0.5, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
GOLDEN_TEACHER = [[1.0, 0.0, 0.5, -2.0], [0.5, -0.5, 3.0, 0.0], [4.0, -1.0, 0.0, 1.0]]
GOLDEN_AT_T2 = [1.016521082212463, 0.0, 0.937313488221063]


def test_hand_computed_case_is_the_jeffreys_value() -> None:
    # P = (.5, .3, .2), Q = (.2, .3, .5): w = P/(P+Q), so the value is sum (P - Q) log(P/Q) = 0.6 ln 2.5.
    teacher = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    student = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64).log()
    expected = 0.6 * math.log(2.5)
    assert python_todi(student.tolist(), teacher.tolist()) == pytest.approx(expected, abs=1e-15)
    assert todi(student, teacher).item() == pytest.approx(expected, abs=1e-14)


def test_golden_values_float64_and_float32() -> None:
    for row, expected in enumerate(GOLDEN_AT_T2):
        assert python_todi(GOLDEN_STUDENT[row], GOLDEN_TEACHER[row], 2.0) == pytest.approx(
            expected, abs=1e-15
        )
    student, teacher = torch.tensor(GOLDEN_STUDENT), torch.tensor(GOLDEN_TEACHER)
    labels = torch.tensor([0, 1, IGNORE_INDEX])
    per_position = todi(student.double(), teacher.double(), temperature=2.0, reduction="none")
    torch.testing.assert_close(
        per_position, torch.tensor(GOLDEN_AT_T2, dtype=torch.float64), atol=1e-14, rtol=0
    )
    mean = todi(student, teacher, labels, temperature=2.0)  # float32 in, float32 math
    assert mean.dtype == torch.float32
    assert mean.item() == pytest.approx(sum(GOLDEN_AT_T2[:2]) / 2, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_matches_python_loop_on_random_logits(temperature: float) -> None:
    student, teacher, _ = make_inputs(shape=(5, 9), seed=1)
    values = todi(student, teacher, temperature=temperature, reduction="none")
    expected = [
        python_todi(s.tolist(), t.tolist(), temperature) for s, t in zip(student, teacher, strict=True)
    ]
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=1e-12)


# --- properties --------------------------------------------------------------------------------------


def test_zero_at_equality_with_zero_gradient() -> None:
    student, _, labels = make_inputs(seed=2)
    student.requires_grad_(True)
    value = todi(student, student.detach().clone(), labels, temperature=2.0)
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-15)
    assert student.grad is not None and student.grad.abs().max().item() < 1e-15


@pytest.mark.parametrize("scale", [0.1, 3.0, 40.0])
def test_value_is_jeffreys_symmetric_and_non_negative(scale: float) -> None:
    """sigma(log P/Q) = P/(P+Q), so the value is KL(P||Q) + KL(Q||P): symmetric, >= each KL, >= 0."""
    student, teacher, labels = make_inputs(seed=3, scale=scale)
    value = todi(student, teacher, labels, reduction="none")
    fkl, rkl = (kl(student, teacher, labels, reduction="none") for kl in (forward_kl, reverse_kl))
    torch.testing.assert_close(value, fkl + rkl, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(
        value, todi(teacher, student, labels, reduction="none"), atol=1e-10, rtol=1e-10
    )
    assert value.min().item() >= 0.0
    assert torch.all(value >= torch.maximum(fkl, rkl) - 1e-10)


def test_temperature_divides_both_logits() -> None:
    student, teacher, labels = make_inputs(seed=4)
    torch.testing.assert_close(
        todi(student, teacher, labels, temperature=2.5), todi(student / 2.5, teacher / 2.5, labels)
    )
    scaled = todi(student, teacher, labels, temperature=2.5, scale_by_t2=True)
    torch.testing.assert_close(scaled, 6.25 * todi(student, teacher, labels, temperature=2.5))


# --- gradients ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gradient_holds_the_weights_constant(temperature: float) -> None:
    student, teacher, labels = make_inputs(seed=5)
    student.requires_grad_(True)
    w = paper_weights(student, teacher, temperature)
    # gradcheck the surrogate (weights are plain numbers there), then compare ToDi's autograd with it.
    assert torch.autograd.gradcheck(lambda s: surrogate(s, teacher, w, temperature), (student,))
    valid = labels != IGNORE_INDEX
    expected_loss = torch.where(valid, surrogate(student, teacher, w, temperature), 0.0).sum() / valid.sum()
    (expected,) = torch.autograd.grad(expected_loss, student)
    (actual,) = torch.autograd.grad(todi(student, teacher, labels, temperature=temperature), student)
    torch.testing.assert_close(actual, expected, atol=1e-13, rtol=1e-10)
    # Detaching matters: differentiating through the weights would give the Jeffreys gradient.
    jeffreys = forward_kl(student, teacher, labels, temperature=temperature) + reverse_kl(
        student, teacher, labels, temperature=temperature
    )
    (jeffreys_grad,) = torch.autograd.grad(jeffreys, student)
    assert (actual - jeffreys_grad).abs().max() > 1e-3


def test_closed_form_logit_gradient() -> None:
    """dL/dz_s = g - Q * sum(g) with g = -w P + (1 - w) Q (log Q - log P + 1), at T = 1, per position."""
    student, teacher, _ = make_inputs(shape=(4, 7), seed=6)
    student.requires_grad_(True)
    (actual,) = torch.autograd.grad(todi(student, teacher, reduction="sum"), student)
    p, q = torch.softmax(teacher, -1), torch.softmax(student.detach(), -1)
    w = p / (p + q)
    g = -w * p + (1 - w) * q * (torch.log(q / p) + 1)
    torch.testing.assert_close(actual, g - q * g.sum(-1, keepdim=True), atol=1e-13, rtol=1e-10)


def test_teacher_gets_no_gradient() -> None:
    student, teacher, labels = make_inputs(seed=7)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    todi(student, teacher, labels).backward()
    assert teacher.grad is None and student.grad is not None


# --- masking, infinities, errors -------------------------------------------------------------------------


def test_masked_positions_and_reductions() -> None:
    student, teacher, labels = make_inputs(seed=8)
    per_position = todi(student, teacher, labels, reduction="none")
    valid = labels != IGNORE_INDEX
    assert torch.all(per_position[~valid] == 0)
    total = todi(student, teacher, labels, reduction="sum")
    torch.testing.assert_close(todi(student, teacher, labels), total / valid.sum())
    torch.testing.assert_close(todi(student, teacher, labels, num_items_in_batch=50), total / 50)
    student.requires_grad_(True)
    nothing = todi(student, teacher, torch.full_like(labels, IGNORE_INDEX))
    nothing.backward()
    assert nothing.item() == 0.0 and student.grad is not None and torch.all(student.grad == 0)


def test_shared_minus_inf_equals_todi_on_the_remaining_vocabulary() -> None:
    student, teacher, labels = make_inputs(seed=9)
    padded_s, padded_t = student.clone(), teacher.clone()
    padded_s[..., [0, 5]] = padded_t[..., [0, 5]] = -math.inf
    padded_s.requires_grad_(True)
    value = todi(padded_s, padded_t, labels, temperature=2.0)
    value.backward()
    reference = todi(student[..., 1:5], teacher[..., 1:5], labels, temperature=2.0)
    assert value.item() == pytest.approx(reference.item(), abs=1e-12)
    assert padded_s.grad is not None and torch.isfinite(padded_s.grad).all()
    assert torch.all(padded_s.grad[..., [0, 5]] == 0)


@pytest.mark.parametrize(("side", "sign"), [("teacher", -1), ("student", -1), ("teacher", 1), ("student", 1)])
def test_inf_in_one_model_is_skipped_and_stays_non_negative(side: str, sign: int) -> None:
    student, teacher, labels = make_inputs(seed=10)
    (student if side == "student" else teacher)[..., 2] = sign * math.inf
    student.requires_grad_(True)
    value = todi(student, teacher, labels, reduction="none")
    value.sum().backward()
    assert torch.isfinite(value).all() and value.min() >= 0  # every kept term is (P - Q) log(P/Q) >= 0
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_registry_and_errors() -> None:
    assert get_divergence("ToDi") is todi  # the authors' KD_OBJ spelling
    student, teacher, labels = make_inputs(shape=(2, 3, 5))
    with pytest.raises(VocabularyMismatchError, match="ULD"):
        todi(student, torch.randn(2, 3, 6, dtype=torch.float64), labels)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        todi(student, teacher, labels, temperature=0.0)
    with pytest.raises(ValueError, match="already be aligned"):
        todi(student, teacher, labels[:, 1:])


# --- fused form --------------------------------------------------------------------------------------


def test_fused_dlogq_matches_autograd_with_detached_weights() -> None:
    student, teacher, _ = make_inputs(shape=(5, 8), seed=11)
    log_p = torch.log_softmax(teacher, -1)
    log_q = torch.log_softmax(student, -1).requires_grad_(True)
    w = torch.sigmoid(log_p - log_q).detach()
    rows = (w * log_p.exp() * (log_p - log_q) + (1 - w) * log_q.exp() * (log_q - log_p)).sum(-1)
    (expected,) = torch.autograd.grad(rows.sum(), log_q)
    keep = torch.ones_like(log_p, dtype=torch.bool)
    values, grad = FUSED_DIVERGENCES["todi"](log_p, log_q.detach(), keep)
    torch.testing.assert_close(values, rows.detach(), atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(grad, expected, atol=1e-14, rtol=1e-12)


@pytest.mark.parametrize(
    ("temperature", "extra"), [(1.0, {}), (2.0, {"scale_by_t2": True, "hard_label_weight": 0.3})]
)
def test_fused_equals_unfused_values_and_gradients(temperature: float, extra: dict[str, Any]) -> None:
    g = torch.Generator().manual_seed(12)
    n, hidden, vocab = 13, 5, 11
    student_hidden = torch.randn(n, hidden, generator=g, dtype=torch.float64).requires_grad_(True)
    student_weight = torch.randn(vocab, hidden, generator=g, dtype=torch.float64).requires_grad_(True)
    teacher_hidden = torch.randn(n, 7, generator=g, dtype=torch.float64)
    teacher_weight = torch.randn(vocab, 7, generator=g, dtype=torch.float64)
    teacher_bias = torch.zeros(vocab, dtype=torch.float64)
    teacher_bias[[2, 9]] = -math.inf  # a padded entry in the teacher only, and one shared below
    student_bias = torch.zeros(vocab, dtype=torch.float64)
    student_bias[9] = -math.inf
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[labels == 9] = 1  # no target on the entry the student cannot produce
    labels[::3] = IGNORE_INDEX
    params = (student_hidden, student_weight)

    student_logits = student_hidden @ student_weight.T + student_bias
    teacher_logits = teacher_hidden @ teacher_weight.T + teacher_bias
    reference = todi(
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        scale_by_t2=extra.get("scale_by_t2", False),
    )
    if "hard_label_weight" in extra:  # the fused hard-label term, tested in tests/losses/test_fused.py
        reference = reference + extra["hard_label_weight"] * hard_label_ce(student_logits, labels)
    expected = torch.autograd.grad(reference, params)
    fused = fused_linear_divergence(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        labels,
        "todi",
        student_bias=student_bias,
        teacher_bias=teacher_bias,
        temperature=temperature,
        chunk_size=4,
        **extra,
    )
    got = torch.autograd.grad(fused, params)
    torch.testing.assert_close(fused, reference.detach(), atol=1e-12, rtol=1e-10)
    for e, a in zip(expected, got, strict=True):
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-10)
