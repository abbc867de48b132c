"""Tests for `reference_impls.losses`: golden values, properties of the math, agreement with a direct
probability-space formula, gradients, and the edge cases users hit (masking, ±inf, bf16, vocab sizes).

The direct formulas below (float64, plain softmax and log, Python loops for AKL) are also what
`tests/fixtures/make_loss_golden.py` uses to write the golden file; they never call the module under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from reference_impls import losses
from reference_impls.losses import (
    DIVERGENCES,
    IGNORE_INDEX,
    VocabularyMismatchError,
    forward_kl,
    generalized_jsd,
    get_divergence,
    hard_label_ce,
    reverse_kl,
    vanilla_kd_loss,
)

GOLDEN_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "loss_golden.json"
# Tolerate a missing file only so that make_loss_golden.py can import this module to create it.
GOLDEN = json.loads(GOLDEN_PATH.read_text()) if GOLDEN_PATH.exists() else {"cases": []}
DIVERGENCE_FNS = [fn.__name__ for fn in DIVERGENCES.values()]  # "forward_kl", ...
ALL_LOSSES = [*DIVERGENCE_FNS, "hard_label_ce", "vanilla_kd_loss"]


# --- independent reference: float64, probability space -------------------------------------------


def _kl(a: Tensor, b: Tensor) -> Tensor:
    return (a * torch.log(a / b)).sum(-1)


def _direct_akl(p: Tensor, q: Tensor, mu: float) -> Tensor:
    out = []
    for p_row, q_row in zip(p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1]), strict=True):
        ranked = sorted(range(len(p_row)), key=lambda v: -float(p_row[v]))
        head, mass = set(), 0.0
        for rank, v in enumerate(ranked):
            mass += float(p_row[v])
            if rank == 0 or mass <= mu:
                head.add(v)
        g_head = sum(abs(float(p_row[v] - q_row[v])) for v in head)
        g_tail = sum(abs(float(p_row[v] - q_row[v])) for v in range(len(p_row)) if v not in head)
        w = g_head / (g_head + g_tail) if g_head + g_tail > 0 else 0.5
        out.append(w * _kl(p_row, q_row) + (1 - w) * _kl(q_row, p_row))
    return torch.stack(out).reshape(p.shape[:-1])


def direct_divergence(
    loss: str,
    p: Tensor,
    q: Tensor,
    *,
    beta: float = 0.5,
    alpha: float = 0.1,
    mu: float = 0.5,
    form: str = "kl",
) -> Tensor:
    """Per-position divergence between teacher probs `p` and student probs `q` (sum over the last dim)."""
    if loss == "forward_kl":
        return _kl(p, q) if form == "kl" else -(p * torch.log(q)).sum(-1)
    if loss == "reverse_kl":
        return _kl(q, p)
    if loss == "generalized_jsd":
        if beta in (0.0, 1.0):
            return _kl(p, q) if beta == 0.0 else _kl(q, p)
        m = beta * p + (1 - beta) * q
        return beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    if loss == "total_variation":
        return 0.5 * (p - q).abs().sum(-1)
    if loss == "skew_forward_kl":
        return _kl(p, alpha * p + (1 - alpha) * q)
    if loss == "skew_reverse_kl":
        return _kl(q, (1 - alpha) * p + alpha * q)
    if loss == "adaptive_kl":
        return _direct_akl(p, q, mu)
    if loss == "todi":
        w = torch.sigmoid(torch.log(p / q))
        return (w * p * torch.log(p / q) + (1 - w) * q * torch.log(q / p)).sum(-1)
    raise ValueError(loss)


def direct_per_position(
    loss: str, student: Tensor, teacher: Tensor, labels: Tensor, *, temperature: float = 1.0, **kwargs: Any
) -> Tensor:
    """Per-position reference values, masked positions set to 0."""
    s, t = student.double(), teacher.double()
    if loss == "hard_label_ce":
        value = -torch.log(torch.softmax(s, -1)).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    elif loss == "vanilla_kd_loss":
        hard = direct_per_position("hard_label_ce", s, t, labels)
        soft = direct_per_position("forward_kl", s, t, labels, temperature=temperature)
        value = (1 - kwargs["alpha"]) * hard + kwargs["alpha"] * temperature**2 * soft
    else:
        scale = temperature**2 if kwargs.pop("scale_by_t2", False) else 1.0
        p, q = torch.softmax(t / temperature, -1), torch.softmax(s / temperature, -1)
        value = scale * direct_divergence(loss, p, q, **kwargs)
    return torch.where(labels != IGNORE_INDEX, value, 0.0)


def direct_mean(per_position: Tensor, labels: Tensor) -> Tensor:
    return per_position.sum() / (labels != IGNORE_INDEX).sum().clamp_min(1)


# --- helpers --------------------------------------------------------------------------------------


def make_inputs(
    shape: tuple[int, int, int] = (3, 4, 7),
    scale: float = 2.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    teacher = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    labels[0, 0] = labels[-1, -1] = IGNORE_INDEX
    return student, teacher, labels


def call(loss: str, student: Tensor, teacher: Tensor, labels: Tensor | None, **kwargs: Any) -> Tensor:
    fn = getattr(losses, loss)
    return (
        fn(student, labels, **kwargs) if loss == "hard_label_ce" else fn(student, teacher, labels, **kwargs)
    )


# --- golden values and the direct formula ----------------------------------------------------------


def test_golden_file_covers_every_loss() -> None:
    assert GOLDEN_PATH.exists(), "run tests/fixtures/make_loss_golden.py"
    # ToDi's golden values live in tests/losses/test_todi.py.
    assert {case["loss"] for case in GOLDEN["cases"]} == set(ALL_LOSSES) - {"todi"}


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{c['loss']}-{c['kwargs']}")
def test_golden_values(case: dict[str, Any]) -> None:
    student64, teacher64 = (
        torch.tensor(GOLDEN[k], dtype=torch.float64) for k in ("student_logits", "teacher_logits")
    )
    student, teacher, labels = student64.float(), teacher64.float(), torch.tensor(GOLDEN["labels"])
    expected = torch.tensor(case["per_position"], dtype=torch.float64)
    assert call(case["loss"], student, teacher, labels, **case["kwargs"]).item() == pytest.approx(
        case["mean"], abs=1e-5
    )
    if case["loss"] != "vanilla_kd_loss":
        per_position = call(case["loss"], student, teacher, labels, reduction="none", **case["kwargs"])
        torch.testing.assert_close(per_position.double(), expected, atol=1e-5, rtol=0)
    # The fixture is reproducible from the direct formula it documents.
    direct = direct_per_position(case["loss"], student64, teacher64, labels, **case["kwargs"])
    torch.testing.assert_close(direct, expected, atol=1e-12, rtol=0)


SETTINGS = [
    ("forward_kl", {}),
    ("forward_kl", {"form": "ce"}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.1}),
    ("generalized_jsd", {"beta": 0.5}),
    ("generalized_jsd", {"beta": 0.9}),
    ("total_variation", {}),
    ("skew_forward_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.3}),
    ("adaptive_kl", {"mu": 0.5}),
    ("adaptive_kl", {"mu": 0.8}),
    ("todi", {}),
]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
@pytest.mark.parametrize(("loss", "kwargs"), SETTINGS)
def test_matches_direct_formula(loss: str, kwargs: dict[str, Any], temperature: float) -> None:
    student, teacher, labels = make_inputs(seed=1)
    expected = direct_per_position(loss, student, teacher, labels, temperature=temperature, **kwargs)
    per_position = call(loss, student, teacher, labels, temperature=temperature, reduction="none", **kwargs)
    assert per_position.dtype == torch.float32
    torch.testing.assert_close(per_position.double(), expected, atol=1e-5, rtol=1e-5)
    mean = call(loss, student, teacher, labels, temperature=temperature, **kwargs)
    assert mean.item() == pytest.approx(direct_mean(expected, labels).item(), abs=1e-5, rel=1e-5)


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (2.0, 0.5), (4.0, 0.9)])
def test_vanilla_kd_and_hard_ce_match_direct_formula(temperature: float, alpha: float) -> None:
    student, teacher, labels = make_inputs(seed=2)
    expected = direct_per_position(
        "vanilla_kd_loss", student, teacher, labels, temperature=temperature, alpha=alpha
    )
    value = vanilla_kd_loss(student, teacher, labels, temperature=temperature, alpha=alpha)
    assert value.item() == pytest.approx(direct_mean(expected, labels).item(), abs=1e-5)
    torch_ce = F.cross_entropy(student.flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX)
    assert hard_label_ce(student, labels).item() == pytest.approx(torch_ce.item(), abs=1e-6)
    assert vanilla_kd_loss(student, teacher, labels, alpha=0.0).item() == pytest.approx(
        torch_ce.item(), abs=1e-6
    )
    soft_only = temperature**2 * forward_kl(student, teacher, labels, temperature=temperature)
    assert vanilla_kd_loss(
        student, teacher, labels, temperature=temperature, alpha=1.0
    ).item() == pytest.approx(soft_only.item(), abs=1e-6)


# --- properties of the math ------------------------------------------------------------------------


@pytest.mark.parametrize("loss", DIVERGENCE_FNS)
def test_zero_at_equality_with_zero_gradient(loss: str) -> None:
    student, _, labels = make_inputs(seed=3)
    student.requires_grad_(True)
    value = call(loss, student, student.detach().clone(), labels, temperature=1.7)
    value.backward()
    assert abs(value.item()) < 1e-6
    assert student.grad is not None and student.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
@pytest.mark.parametrize("loss", DIVERGENCE_FNS)
def test_non_negative_and_permutation_invariant(loss: str, scale: float) -> None:
    student, teacher, labels = make_inputs(scale=scale, seed=4)
    per_position = call(loss, student, teacher, labels, reduction="none")
    assert per_position.min().item() >= -1e-6
    # Reordering the vocabulary the same way in both models changes nothing; this catches AKL ports
    # that build the head mask in sorted order and apply it in vocabulary order.
    perm = torch.randperm(student.shape[-1], generator=torch.Generator().manual_seed(0))
    permuted = call(loss, student[..., perm], teacher[..., perm], labels, reduction="none")
    torch.testing.assert_close(permuted, per_position, atol=1e-5, rtol=1e-5)


def _binary_entropy(beta: float) -> float:
    return -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_bounded_by_binary_entropy(beta: float) -> None:
    student, teacher, labels = make_inputs(scale=20.0, seed=5)
    assert (
        generalized_jsd(student, teacher, labels, beta=beta, reduction="none").max()
        <= _binary_entropy(beta) + 1e-6
    )
    # Disjoint supports reach the bound.
    disjoint_s, disjoint_t = torch.zeros(1, 4), torch.zeros(1, 4)
    disjoint_s[0, 0] = disjoint_t[0, 1] = 60.0
    assert generalized_jsd(disjoint_s, disjoint_t, beta=beta).item() == pytest.approx(
        _binary_entropy(beta), abs=1e-5
    )


@pytest.mark.convention("jsd-beta-direction")
def test_jsd_endpoints_are_exactly_forward_and_reverse_kl() -> None:
    student, teacher, labels = make_inputs(seed=6)
    for beta, kl in ((0.0, forward_kl), (1.0, reverse_kl)):
        assert torch.equal(generalized_jsd(student, teacher, labels, beta=beta), kl(student, teacher, labels))


@pytest.mark.convention("jsd-beta-direction")
def test_jsd_is_not_continuous_at_the_endpoints() -> None:
    """Documented, not a bug: the interior formula is about beta * FKL near 0 (and (1 - beta) * RKL near 1)."""
    student, teacher, labels = make_inputs(seed=6)
    near_zero = generalized_jsd(student, teacher, labels, beta=1e-4)
    near_one = generalized_jsd(student, teacher, labels, beta=1 - 1e-4)
    assert near_zero < 1e-3 * forward_kl(student, teacher, labels)
    assert near_one < 1e-3 * reverse_kl(student, teacher, labels)


@pytest.mark.parametrize(
    ("skew", "plain"), [("skew_forward_kl", "forward_kl"), ("skew_reverse_kl", "reverse_kl")]
)
def test_skew_kl_endpoints_and_bound(skew: str, plain: str) -> None:
    student, teacher, labels = make_inputs(seed=7)
    torch.testing.assert_close(
        call(skew, student, teacher, labels, alpha=0.0), call(plain, student, teacher, labels)
    )
    assert call(skew, student, teacher, labels, alpha=1.0).item() == 0.0
    far_s, far_t, _ = make_inputs(scale=30.0, seed=7)
    assert call(skew, far_s, far_t, None, alpha=0.2, reduction="none").max() <= -math.log(0.2) + 1e-6


def test_total_variation_at_most_one() -> None:
    student, teacher, labels = make_inputs(scale=40.0, seed=8)
    per_position = losses.total_variation(student, teacher, labels, reduction="none")
    assert per_position.max().item() <= 1.0 + 1e-6
    assert per_position.max().item() > 0.99  # near-one-hot distributions on different tokens


def _logits_from_probs(*rows: list[float]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


@pytest.mark.parametrize(
    ("teacher_probs", "student_probs", "mu", "expected"),
    [
        # Gap only on the two most likely teacher tokens (vocab positions 3 and 1): head, so FKL.
        ([0.1, 0.3, 0.1, 0.5], [0.1, 0.5, 0.1, 0.3], 0.85, "forward_kl"),
        # Most likely teacher token matches; the gap sits in the tail, so RKL.
        ([0.1, 0.6, 0.2, 0.1], [0.05, 0.6, 0.2, 0.15], 0.5, "reverse_kl"),
    ],
)
def test_adaptive_kl_reduces_to_fkl_or_rkl(
    teacher_probs: list[float], student_probs: list[float], mu: float, expected: str
) -> None:
    teacher, student = _logits_from_probs(teacher_probs), _logits_from_probs(student_probs)
    value = losses.adaptive_kl(student, teacher, mu=mu)
    assert value.item() == pytest.approx(call(expected, student, teacher, None).item(), abs=1e-12)


def test_adaptive_kl_lies_between_fkl_and_rkl() -> None:
    student, teacher, labels = make_inputs(seed=9)
    akl, fkl, rkl = (
        call(n, student, teacher, labels, reduction="none")
        for n in ("adaptive_kl", "forward_kl", "reverse_kl")
    )
    assert torch.all(akl >= torch.minimum(fkl, rkl) - 1e-6) and torch.all(
        akl <= torch.maximum(fkl, rkl) + 1e-6
    )


@pytest.mark.convention("cross-entropy-form")
def test_cross_entropy_form_adds_teacher_entropy_with_same_gradient() -> None:
    student, teacher, labels = make_inputs(seed=10)
    grads = []
    for form in ("kl", "ce"):
        s = student.clone().requires_grad_(True)
        forward_kl(s, teacher, labels, form=form).backward()
        grads.append(s.grad)
    p = torch.softmax(teacher.double(), -1)
    entropy = torch.where(labels != IGNORE_INDEX, -(p * p.log()).sum(-1), 0.0)
    ce = forward_kl(student, teacher, labels, form="ce", reduction="none")
    torch.testing.assert_close(
        ce.double(), forward_kl(student, teacher, labels, reduction="none").double() + entropy
    )
    torch.testing.assert_close(grads[0], grads[1])


# --- gradients ----------------------------------------------------------------------------------------


# AKL's and ToDi's weights are stop-gradient: see their own gradient tests (ToDi's in test_todi.py).
@pytest.mark.parametrize("loss", [loss for loss in ALL_LOSSES if loss not in ("adaptive_kl", "todi")])
def test_gradcheck_wrt_student_logits(loss: str) -> None:
    student, teacher, labels = make_inputs(shape=(2, 2, 5), seed=11, dtype=torch.float64)
    student.requires_grad_(True)
    kwargs: dict[str, Any] = {"temperature": 1.5} if loss != "hard_label_ce" else {}
    if loss != "vanilla_kd_loss":
        kwargs["reduction"] = "none"
    assert torch.autograd.gradcheck(lambda s: call(loss, s, teacher, labels, **kwargs), (student,))


def test_adaptive_kl_gradient_treats_the_weights_as_constants() -> None:
    """AKL's weights are stop-gradient, so gradcheck (the derivative of the value) does not apply:
    its gradient must be w * grad(FKL) + (1 - w) * grad(RKL) with w fixed per position."""
    student, teacher, labels = make_inputs(shape=(2, 3, 6), seed=11, dtype=torch.float64)
    student.requires_grad_(True)
    p, q = torch.softmax(teacher / 1.5, -1), torch.softmax(student.detach() / 1.5, -1)
    fkl, rkl = _kl(p, q), _kl(q, p)
    w_forward = (_direct_akl(p, q, mu=0.5) - rkl) / (fkl - rkl)
    options: dict[str, Any] = {"temperature": 1.5, "reduction": "none"}
    mixed = w_forward * forward_kl(student, teacher, labels, **options) + (1 - w_forward) * reverse_kl(
        student, teacher, labels, **options
    )
    (expected,) = torch.autograd.grad(mixed.sum(), student)
    (actual,) = torch.autograd.grad(losses.adaptive_kl(student, teacher, labels, **options).sum(), student)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-8)
    assert actual.abs().max() > 0


@pytest.mark.convention("teacher-gets-no-gradient")
@pytest.mark.parametrize("loss", DIVERGENCE_FNS)
def test_teacher_gets_no_gradient(loss: str) -> None:
    student, teacher, labels = make_inputs(seed=12)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    call(loss, student, teacher, labels).backward()
    assert teacher.grad is None and student.grad is not None


# --- edge cases: masking, infinities, dtypes ----------------------------------------------------------


@pytest.mark.convention("empty-batch")
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_all_positions_masked_gives_exact_zero_and_zero_grads(loss: str) -> None:
    student, teacher, labels = make_inputs(seed=13)
    student.requires_grad_(True)
    value = call(loss, student, teacher, torch.full_like(labels, IGNORE_INDEX))
    value.backward()
    assert value.item() == 0.0
    assert student.grad is not None and torch.all(student.grad == 0)


@pytest.mark.convention("minus-inf-logits")
@pytest.mark.parametrize("loss", [*DIVERGENCE_FNS, "hard_label_ce"])
def test_shared_minus_inf_equals_loss_on_remaining_vocab(loss: str) -> None:
    student, teacher, labels = make_inputs(seed=14)
    labels = torch.where(labels == IGNORE_INDEX, labels, labels.clamp(1, 4))  # not a padded entry
    kept = [1, 2, 3, 4]
    padded_s, padded_t = student.clone(), teacher.clone()
    padded_s[..., [0, 5, 6]] = padded_t[..., [0, 5, 6]] = -math.inf
    padded_s.requires_grad_(True)
    kwargs = {"temperature": 1.3} if loss != "hard_label_ce" else {}
    value = call(loss, padded_s, padded_t, labels, **kwargs)
    value.backward()
    sliced_labels = torch.where(labels == IGNORE_INDEX, labels, labels - 1)
    reference = call(loss, student[..., kept], teacher[..., kept], sliced_labels, **kwargs)
    assert value.item() == pytest.approx(reference.item(), abs=1e-6)
    assert padded_s.grad is not None and torch.isfinite(padded_s.grad).all()
    assert torch.all(padded_s.grad[..., [0, 5, 6]] == 0)


@pytest.mark.convention("minus-inf-logits")
@pytest.mark.parametrize("loss", DIVERGENCE_FNS)
def test_fully_minus_inf_padding_row_is_finite(loss: str) -> None:
    student, teacher, labels = make_inputs(seed=15)
    student[0, 0] = teacher[0, 0] = -math.inf  # a padding position, label -100
    student.requires_grad_(True)
    value = call(loss, student, teacher, labels)
    value.backward()
    assert torch.isfinite(value) and student.grad is not None and torch.isfinite(student.grad).all()


@pytest.mark.convention("minus-inf-logits")
@pytest.mark.parametrize(("side", "sign"), [("teacher", -1), ("student", -1), ("teacher", 1), ("student", 1)])
@pytest.mark.parametrize("loss", DIVERGENCE_FNS)
def test_inf_in_one_model_is_skipped(loss: str, side: str, sign: int) -> None:
    """The entry contributes 0; the other model's normaliser keeps it, a +inf is dropped from its own."""
    student, teacher, labels = make_inputs(seed=16)
    (student if side == "student" else teacher)[..., 2] = sign * math.inf
    student.requires_grad_(True)
    value = call(loss, student, teacher, labels, reduction="none")
    value.sum().backward()
    assert torch.isfinite(value).all() and student.grad is not None and torch.isfinite(student.grad).all()
    rest = [0, 1, 3, 4, 5, 6]

    def probs(logits: Tensor, has_inf: bool) -> Tensor:
        logits = logits.detach().double()
        return torch.softmax(logits[..., rest], -1) if has_inf else torch.softmax(logits, -1)[..., rest]

    p, q = probs(teacher, side == "teacher"), probs(student, side == "student")
    expected = torch.where(labels != IGNORE_INDEX, direct_divergence(loss, p, q), 0.0)
    torch.testing.assert_close(value.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.convention("low-precision-reductions")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss", DIVERGENCE_FNS)
def test_half_precision_inputs_give_float32_close_to_float32_inputs(loss: str, dtype: torch.dtype) -> None:
    student, teacher, labels = make_inputs(seed=17, dtype=dtype)
    value = call(loss, student, teacher, labels)
    assert value.dtype == torch.float32
    reference = call(loss, student.float(), teacher.float(), labels)
    assert value.item() == pytest.approx(reference.item(), abs=1e-6)
    mixed = call(loss, student.float(), teacher, labels)  # bf16 teacher, fp32 student
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(reference.item(), abs=1e-6)


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [*DIVERGENCE_FNS, "vanilla_kd_loss"])
def test_vocabulary_mismatch_error_is_helpful(loss: str) -> None:
    student, _, labels = make_inputs(shape=(2, 3, 5))
    teacher = torch.randn(2, 3, 6)
    with pytest.raises(VocabularyMismatchError) as info:
        call(loss, student, teacher, labels)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert all(part in message for part in ("5", "6", "ULD", "DSKD", "`uld`", "`dskd`", "logits[..., :5]"))


_S, _T, _LABELS = make_inputs(shape=(2, 3, 5))


@pytest.mark.parametrize(
    ("thunk", "match"),
    [
        (lambda: forward_kl(_S, _T, _LABELS, temperature=0.0), "temperature must be > 0"),
        (lambda: reverse_kl(_S, _T, _LABELS, temperature=-1.0), "temperature must be > 0"),
        (lambda: vanilla_kd_loss(_S, _T, _LABELS, temperature=math.nan), "temperature must be > 0"),
        (lambda: generalized_jsd(_S, _T, _LABELS, beta=1.5), r"beta must be in \[0, 1\]"),
        (lambda: generalized_jsd(_S, _T, _LABELS, beta=-0.1), r"beta must be in \[0, 1\]"),
        (lambda: losses.skew_forward_kl(_S, _T, _LABELS, alpha=1.2), r"alpha must be in \[0, 1\]"),
        (lambda: losses.skew_reverse_kl(_S, _T, _LABELS, alpha=-0.5), r"alpha must be in \[0, 1\]"),
        (lambda: vanilla_kd_loss(_S, _T, _LABELS, alpha=2.0), r"alpha must be in \[0, 1\]"),
        (lambda: losses.adaptive_kl(_S, _T, _LABELS, mu=1.5), r"mu must be in \[0, 1\]"),
        (
            lambda: forward_kl(_S, _T, _LABELS, reduction="batchmean"),
            "reduction must be 'mean', 'sum' or 'none'",
        ),
        (lambda: hard_label_ce(_S, _LABELS, reduction="avg"), "reduction must be"),
        (lambda: forward_kl(_S, _T, _LABELS, form="js"), "form must be 'kl' or 'ce'"),
        (lambda: forward_kl(_S, _T, _LABELS[:, :2]), "already be aligned"),
        (lambda: hard_label_ce(_S, _LABELS[:, 1:]), "already be aligned"),
        (lambda: forward_kl(_S, _T[:, :2], _LABELS), "must have the same shape"),
        (lambda: forward_kl(_S, _T, _LABELS, reduction="sum", num_items_in_batch=4), "num_items_in_batch"),
    ],
)
def test_bad_arguments_raise_helpful_value_error(thunk: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        thunk()


# --- reductions and scaling -----------------------------------------------------------------------------


@pytest.mark.convention("accumulation-normaliser")
@pytest.mark.parametrize("loss", [*DIVERGENCE_FNS, "hard_label_ce"])
def test_reductions(loss: str) -> None:
    student, teacher, labels = make_inputs(seed=18)
    per_position = call(loss, student, teacher, labels, reduction="none")
    valid = labels != IGNORE_INDEX
    assert per_position.shape == labels.shape and torch.all(per_position[~valid] == 0)
    total = call(loss, student, teacher, labels, reduction="sum")
    torch.testing.assert_close(total, per_position.sum())
    torch.testing.assert_close(call(loss, student, teacher, labels), total / valid.sum())
    # num_items_in_batch (tokens in the whole accumulated batch) replaces the denominator.
    torch.testing.assert_close(call(loss, student, teacher, labels, num_items_in_batch=40), total / 40)
    torch.testing.assert_close(
        call(loss, student, teacher, labels, num_items_in_batch=torch.tensor(40)), total / 40
    )
    if loss != "hard_label_ce":  # no labels: every position counts
        unmasked = call(loss, student, teacher, None, reduction="none")
        torch.testing.assert_close(call(loss, student, teacher, None), unmasked.mean())


@pytest.mark.convention("temperature-squared")
@pytest.mark.parametrize("loss", DIVERGENCE_FNS)
def test_t_squared_scaling_is_opt_in(loss: str) -> None:
    student, teacher, labels = make_inputs(seed=19)
    plain = call(loss, student, teacher, labels, temperature=3.0)
    scaled = call(loss, student, teacher, labels, temperature=3.0, scale_by_t2=True)
    torch.testing.assert_close(scaled, 9.0 * plain)
    assert not torch.allclose(plain, call(loss, student, teacher, labels))  # T does change the value


# --- registry -----------------------------------------------------------------------------------------


def test_divergence_registry() -> None:
    assert list(DIVERGENCES) == [
        "forward-kl",
        "reverse-kl",
        "generalized-jsd",
        "total-variation",
        "skew-forward-kl",
        "skew-reverse-kl",
        "adaptive-kl",
        "todi",
    ]
    assert isinstance(DIVERGENCES, MappingProxyType)
    with pytest.raises(TypeError):
        DIVERGENCES["forward-kl"] = reverse_kl  # type: ignore[index]
    assert get_divergence("reverse-kl") is reverse_kl
    assert get_divergence("Forward_KL") is forward_kl
    with pytest.raises(KeyError, match="valid names: forward-kl, reverse-kl"):
        get_divergence("kl")
