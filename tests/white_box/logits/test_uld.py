"""ULD: the sorted-probability (Wasserstein-1) loss across vocabularies against hand-computed and
direct values, and the recipe's step (cross-entropy + λ·ULD on two tokenizations) and defaults.

The alignment and the pair tokenizer it relies on are shared code (test_cross_tokenizer.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from reference_impls.core.data_sources import TeacherGenerated
from reference_impls.core.tokenizer import build_pair_tokenizer, build_tokenizer, encode_pair
from reference_impls.white_box.logits.uld import ULDStep, uld_loss, uld_recipe

IGNORE = -100


def _shifted(tokenizer, prompt: str, response: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids[:-1], labels[1:]) of one example, as a batch of one."""
    ids, labels = encode_pair(tokenizer, prompt, response)
    return torch.tensor([ids[:-1]]), torch.tensor([labels[1:]])


# --- the loss ------------------------------------------------------------------------------------


def test_uld_hand_computed_on_vocabularies_of_size_three_and_two() -> None:
    student = torch.tensor([[[0.5, 0.3, 0.2]]]).log()
    teacher = torch.tensor([[[0.1, 0.9]]]).log()
    labels = torch.tensor([[0]])
    # sorted student (0.5, 0.3, 0.2) vs sorted, zero-padded teacher (0.9, 0.1, 0): 0.4 + 0.2 + 0.2
    assert uld_loss(student, teacher, labels, labels).item() == pytest.approx(0.8, abs=1e-6)
    assert uld_loss(teacher, student, labels, labels).item() == pytest.approx(0.8, abs=1e-6)
    assert uld_loss(student, student, labels, labels).item() == 0.0


def _uld_direct(student_logits, teacher_logits, student_labels, teacher_labels, ts=1.0, tt=1.0) -> float:
    total, count = 0.0, 0
    for b in range(student_logits.shape[0]):
        s_pos = [i for i, y in enumerate(student_labels[b].tolist()) if y != IGNORE]
        t_pos = [i for i, y in enumerate(teacher_labels[b].tolist()) if y != IGNORE]
        for i, j in zip(s_pos, t_pos, strict=False):
            p_s = sorted(torch.softmax(student_logits[b, i].double() / ts, -1).tolist(), reverse=True)
            p_t = sorted(torch.softmax(teacher_logits[b, j].double() / tt, -1).tolist(), reverse=True)
            width = max(len(p_s), len(p_t))
            p_s, p_t = p_s + [0.0] * (width - len(p_s)), p_t + [0.0] * (width - len(p_t))
            total += sum(abs(a - c) for a, c in zip(p_s, p_t, strict=True))
            count += 1
    return total / max(count, 1)


def _random_pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 7, 9, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(3, 10, 5, generator=g, dtype=torch.float64) * 2
    student_labels = torch.tensor([[IGNORE] * 2 + [1] * 5, [IGNORE] * 6 + [2], [IGNORE] * 7])
    teacher_labels = torch.tensor([[IGNORE] * 7 + [1] * 3, [IGNORE] * 1 + [3] * 9, [IGNORE] * 4 + [0] * 6])
    return student, teacher, student_labels, teacher_labels


def test_uld_matches_direct_formula_with_temperatures() -> None:
    student, teacher, s_labels, t_labels = _random_pair()
    for ts, tt in ((1.0, 1.0), (2.0, 0.5)):
        expected = _uld_direct(student, teacher, s_labels, t_labels, ts, tt)
        got = uld_loss(student, teacher, s_labels, t_labels, student_temperature=ts, teacher_temperature=tt)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(expected, rel=1e-12)
    per_pair = uld_loss(student, teacher, s_labels, t_labels, reduction="none")
    assert per_pair.shape == (3, 3) and per_pair[2].abs().sum() == 0  # row 2 has no response
    summed = uld_loss(student, teacher, s_labels, t_labels, reduction="sum")
    assert summed.item() == pytest.approx(per_pair.sum().item())
    assert uld_loss(student, teacher, s_labels, t_labels, num_items_in_batch=8).item() == pytest.approx(
        summed.item() / 8
    )


def test_uld_is_invariant_to_permuting_either_vocabulary_and_to_masked_padding() -> None:
    student, teacher, s_labels, t_labels = _random_pair(1)
    base = uld_loss(student, teacher, s_labels, t_labels)
    permuted = uld_loss(student[..., torch.randperm(9)], teacher[..., torch.randperm(5)], s_labels, t_labels)
    assert permuted.item() == pytest.approx(base.item(), rel=1e-12)
    # -inf columns (masked vocabulary padding) are the same as a smaller vocabulary.
    padded = torch.cat([teacher, torch.full((3, 10, 4), -math.inf, dtype=torch.float64)], dim=-1)
    assert uld_loss(student, padded, s_labels, t_labels).item() == pytest.approx(base.item(), rel=1e-12)


def test_uld_gradients_reach_only_the_student() -> None:
    student, teacher, s_labels, t_labels = _random_pair(2)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    uld_loss(student, teacher, s_labels, t_labels).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    # Positions outside the aligned response get no gradient.
    assert student.grad[0, :2].abs().sum() == 0 and student.grad[2].abs().sum() == 0
    assert torch.autograd.gradcheck(
        lambda s: uld_loss(s, teacher.detach(), s_labels, t_labels), (student.detach().requires_grad_(True),)
    )


def test_uld_all_masked_batch_is_zero_with_finite_gradients() -> None:
    student = torch.randn(2, 4, 6, requires_grad=True)
    teacher = torch.randn(2, 5, 3)
    labels_s, labels_t = torch.full((2, 4), IGNORE), torch.full((2, 5), IGNORE)
    loss = uld_loss(student, teacher, labels_s, labels_t)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(student.grad).all() and student.grad.abs().sum() == 0


def test_uld_runs_on_two_real_tokenizations() -> None:
    teacher_tok, student_tok = build_tokenizer(), build_pair_tokenizer()
    _, t_labels = _shifted(teacher_tok, "rev: abc =", "cba")
    _, s_labels = _shifted(student_tok, "rev: abc =", "cba")
    student = torch.randn(1, s_labels.shape[1], len(student_tok), requires_grad=True)
    teacher = torch.randn(1, t_labels.shape[1], len(teacher_tok))
    loss = uld_loss(student, teacher, s_labels, t_labels)
    loss.backward()
    assert 0 < loss.item() <= 2  # L1 between two probability vectors
    assert student.grad.abs().sum() > 0


def test_uld_rejects_bad_input_with_a_fix() -> None:
    student, teacher, s_labels, t_labels = _random_pair()
    with pytest.raises(ValueError, match="shift before calling"):
        uld_loss(student, teacher, s_labels[:, 1:], t_labels)
    with pytest.raises(ValueError, match="student_temperature must be > 0"):
        uld_loss(student, teacher, s_labels, t_labels, student_temperature=0.0)
    with pytest.raises(ValueError, match="same example"):
        uld_loss(student, teacher[:2], s_labels, t_labels[:2])


# --- the recipe ----------------------------------------------------------------------------------


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits on any input are the given tensor."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        assert input_ids.shape == self.logits.shape[:2] == attention_mask.shape
        return SimpleNamespace(logits=self.logits)


def test_recipe_defaults_are_the_authors() -> None:
    recipe = uld_recipe()
    assert recipe.method_id == "uld"
    assert recipe.hyperparameters == {
        "distil_factor": 1.5,
        "cross_entropy_factor": 1.0,
        "student_temperature": 1.0,
        "teacher_temperature": 1.0,
    }
    assert recipe.loss == ULDStep(1.5, 1.0, 1.0, 1.0)
    assert isinstance(recipe.data, TeacherGenerated)
    assert recipe.students.tokenizer == "pair" and recipe.students.cross_tokenizer


def test_step_is_cross_entropy_plus_lambda_uld_on_each_models_own_tokens() -> None:
    teacher_tok, student_tok = build_tokenizer(), build_pair_tokenizer()
    s_ids, s_labels = encode_pair(student_tok, "rev: abc =", "cba")
    t_ids, t_labels = encode_pair(teacher_tok, "rev: abc =", "cba")
    batch = {
        "input_ids": torch.tensor([s_ids]),
        "attention_mask": torch.ones(1, len(s_ids), dtype=torch.long),
        "labels": torch.tensor([s_labels]),
        "teacher_input_ids": torch.tensor([t_ids]),
        "teacher_attention_mask": torch.ones(1, len(t_ids), dtype=torch.long),
        "teacher_labels": torch.tensor([t_labels]),
    }
    g = torch.Generator().manual_seed(0)
    student_logits = torch.randn(1, len(s_ids), len(student_tok), generator=g, dtype=torch.float64)
    teacher_logits = torch.randn(1, len(t_ids), len(teacher_tok), generator=g, dtype=torch.float64)
    step = ULDStep(distil_factor=0.7, cross_entropy_factor=0.3, student_temperature=2.0)
    got = step(FixedLogits(student_logits), FixedLogits(teacher_logits), batch, None)

    # Shift once (logits[:, :-1] predict labels[:, 1:]), then CE on the student's labels plus the
    # direct ULD between the left-aligned answer positions.
    s_pred, s_next = student_logits[:, :-1], torch.tensor([s_labels[1:]])
    t_pred, t_next = teacher_logits[:, :-1], torch.tensor([t_labels[1:]])
    mask = s_next[0] != IGNORE
    ce = -torch.log_softmax(s_pred[0][mask], -1).gather(-1, s_next[0][mask].unsqueeze(-1)).mean()
    expected = 0.3 * ce.item() + 0.7 * _uld_direct(s_pred, t_pred, s_next, t_next, ts=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="teacher's logits"):
        step(FixedLogits(student_logits), None, batch, None)
