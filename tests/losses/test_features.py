"""Tests for the feature (hint) losses in `reference_impls.losses.features`: each against an
independent float64 formula written as loops over sequences, heads and positions (never calling
the module under test), properties of the math (zero at equality, invariances), the masking
convention (padding changes nothing), gradients, and the errors users hit.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from reference_impls.losses import (
    attention_kl,
    attention_mse,
    hidden_cosine,
    hidden_mse,
    normalized_distance,
    relation_kl,
)

torch.manual_seed(0)
B, T, H = 2, 5, 3
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def _kept(mask: Tensor) -> list[tuple[int, int]]:
    return [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def _attention(batch: int, heads: int, mask: Tensor) -> Tensor:
    """Random attention probabilities that put no mass on padded keys, as a model's would."""
    scores = torch.randn(batch, heads, T, T, dtype=torch.float64)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, -math.inf)
    return scores.softmax(-1)


def ref_hidden_mse(s: Tensor, t: Tensor, mask: Tensor) -> float:
    values = [
        sum((float(a) - float(b)) ** 2 for a, b in zip(s[p], t[p], strict=True)) / s.shape[-1]
        for p in _kept(mask)
    ]
    return sum(values) / len(values)


def ref_cosine(s: Tensor, t: Tensor, mask: Tensor) -> float:
    values = []
    for p in _kept(mask):
        dot = sum(float(a) * float(b) for a, b in zip(s[p], t[p], strict=True))
        norms = math.sqrt(sum(float(a) ** 2 for a in s[p])) * math.sqrt(sum(float(b) ** 2 for b in t[p]))
        values.append(1.0 - dot / norms)
    return sum(values) / len(values)


def ref_normalized_distance(s: Tensor, t: Tensor, mask: Tensor) -> float:
    values = []
    for p in _kept(mask):
        ns, nt = math.sqrt(sum(float(a) ** 2 for a in s[p])), math.sqrt(sum(float(b) ** 2 for b in t[p]))
        values.append(sum((float(a) / ns - float(b) / nt) ** 2 for a, b in zip(s[p], t[p], strict=True)))
    return sum(values) / len(values)


def ref_attention(s: Tensor, t: Tensor, mask: Tensor, kind: str) -> float:
    values = []
    for b, q in _kept(mask):
        keys = [k for k in range(T) if mask[b, k]]
        per_head = []
        for h in range(s.shape[1]):
            if kind == "mse":
                per_head.append(
                    sum((float(s[b, h, q, k]) - float(t[b, h, q, k])) ** 2 for k in keys) / len(keys)
                )
            else:
                per_head.append(
                    sum(float(t[b, h, q, k]) * math.log(t[b, h, q, k] / s[b, h, q, k]) for k in keys)
                )
        values.append(sum(per_head) / len(per_head))
    return sum(values) / len(values)


def ref_relation_kl(s: Tensor, t: Tensor, heads: int, mask: Tensor) -> float:
    def relation(x: Tensor, b: int, h: int, q: int, keys: list[int]) -> list[float]:
        width = x.shape[-1] // heads
        part = x[b, :, h * width : (h + 1) * width]
        return _softmax(
            [
                sum(float(u) * float(v) for u, v in zip(part[q], part[k], strict=True)) / math.sqrt(width)
                for k in keys
            ]
        )

    values = []
    for b, q in _kept(mask):
        keys = [k for k in range(T) if mask[b, k]]
        per_head = []
        for h in range(heads):
            p, r = relation(t, b, h, q, keys), relation(s, b, h, q, keys)
            per_head.append(sum(pi * math.log(pi / ri) for pi, ri in zip(p, r, strict=True)))
        values.append(sum(per_head) / heads)
    return sum(values) / len(values)


def test_hidden_losses_match_the_loop_formulas() -> None:
    s, t = torch.randn(B, T, 8, dtype=torch.float64), torch.randn(B, T, 8, dtype=torch.float64)
    assert hidden_mse(s, t, MASK).item() == pytest.approx(ref_hidden_mse(s, t, MASK), rel=1e-12)
    assert hidden_cosine(s, t, MASK).item() == pytest.approx(ref_cosine(s, t, MASK), rel=1e-12)
    assert normalized_distance(s, t, MASK).item() == pytest.approx(
        ref_normalized_distance(s, t, MASK), rel=1e-12
    )


def test_attention_losses_match_the_loop_formulas() -> None:
    s, t = _attention(B, H, MASK), _attention(B, H, MASK)
    assert attention_mse(s, t, MASK).item() == pytest.approx(ref_attention(s, t, MASK, "mse"), rel=1e-12)
    assert attention_kl(s, t, MASK).item() == pytest.approx(ref_attention(s, t, MASK, "kl"), rel=1e-12)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_relation_kl_matches_the_loop_formula_across_widths(heads: int) -> None:
    s, t = torch.randn(B, T, 8, dtype=torch.float64), torch.randn(B, T, 16, dtype=torch.float64)
    assert relation_kl(s, t, heads, MASK).item() == pytest.approx(
        ref_relation_kl(s, t, heads, MASK), rel=1e-10
    )


def test_every_loss_is_zero_when_the_student_equals_the_teacher() -> None:
    x, maps = torch.randn(B, T, 8), _attention(B, H, MASK)
    for value in (hidden_mse(x, x), hidden_cosine(x, x), attention_mse(maps, maps, MASK),
                  attention_kl(maps, maps, MASK), relation_kl(x, x, 2, MASK)):  # fmt: skip
        assert value.abs().item() < 1e-6


def test_invariances_cosine_to_scale_relations_to_rotations_within_a_head() -> None:
    s, t = torch.randn(B, T, 8, dtype=torch.float64), torch.randn(B, T, 8, dtype=torch.float64)
    assert hidden_cosine(3.0 * s, t).item() == pytest.approx(hidden_cosine(s, t).item(), rel=1e-12)
    # A relation depends on dot products within a head only: rotating each head's coordinates
    # (a block-diagonal orthogonal map) leaves it unchanged; MSE between the states does not.
    q1, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    rotation = torch.block_diag(q1, q2)
    assert relation_kl(s @ rotation, t, 2, MASK).item() == pytest.approx(
        relation_kl(s, t, 2, MASK).item(), rel=1e-10
    )
    assert hidden_mse(s @ rotation, t).item() != pytest.approx(hidden_mse(s, t).item(), rel=1e-3)


def test_padding_further_changes_nothing_and_padded_values_are_ignored() -> None:
    s, t = torch.randn(B, T, 8), torch.randn(B, T, 8)
    wider_mask = torch.cat([MASK, torch.zeros(B, 2, dtype=MASK.dtype)], dim=1)
    padded_s = torch.cat([s, 1e6 * torch.randn(B, 2, 8)], dim=1)  # huge junk at padded positions
    padded_t = torch.cat([t, torch.randn(B, 2, 8)], dim=1)
    for loss in (hidden_mse, hidden_cosine):
        assert loss(padded_s, padded_t, wider_mask).item() == pytest.approx(loss(s, t, MASK).item(), rel=1e-5)
    assert relation_kl(padded_s, padded_t, 2, wider_mask).item() == pytest.approx(
        relation_kl(s, t, 2, MASK).item(), rel=1e-5
    )
    # Raw scores at padded keys may be -10000 or -inf (TinyBERT compares raw scores): ignored.
    maps_s, maps_t = _attention(B, H, MASK), _attention(B, H, MASK)
    junk = maps_s.clone().masked_fill((MASK == 0)[:, None, None, :], -math.inf)
    assert attention_mse(junk, maps_t, MASK).item() == pytest.approx(
        attention_mse(maps_s, maps_t, MASK).item()
    )


def test_reductions_follow_the_token_losses() -> None:
    s, t = torch.randn(B, T, 8), torch.randn(B, T, 8)
    per_position = hidden_mse(s, t, MASK, reduction="none")
    assert per_position.shape == (B, T) and (per_position[MASK == 0] == 0).all()
    assert hidden_mse(s, t, MASK, reduction="sum").item() == pytest.approx(per_position.sum().item())
    assert hidden_mse(s, t, MASK).item() == pytest.approx(per_position.sum().item() / int(MASK.sum()))


def test_gradients_reach_the_student_only() -> None:
    s = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 4, 6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: relation_kl(x, t, 2), (s,))
    torch.autograd.gradcheck(lambda x: hidden_cosine(x, t[..., :4]), (s,))
    relation_kl(s, t, 2).backward()
    assert t.grad is None and s.grad is not None


def test_bf16_inputs_are_computed_in_float32() -> None:
    s, t = torch.randn(B, T, 8), torch.randn(B, T, 8)
    value = hidden_mse(s.bfloat16(), t.bfloat16())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(
        hidden_mse(s.bfloat16().float(), t.bfloat16().float()).item(), rel=1e-6
    )


def test_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="projector"):
        hidden_mse(torch.randn(B, T, 4), torch.randn(B, T, 8))
    with pytest.raises(ValueError, match="relation_kl"):
        attention_kl(_attention(B, 2, MASK), _attention(B, 3, MASK))
    with pytest.raises(ValueError, match="divide"):
        relation_kl(torch.randn(B, T, 6), torch.randn(B, T, 8), 4)
    with pytest.raises(ValueError, match=r"mask shape"):
        hidden_mse(torch.randn(B, T, 4), torch.randn(B, T, 4), torch.ones(B, T + 1))
    with pytest.raises(ValueError, match="batch and sequence"):
        relation_kl(torch.randn(B, T, 4), torch.randn(B, T + 1, 4), 2)
