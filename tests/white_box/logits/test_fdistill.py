"""f-DISTILL's step-wise decompositions: the halves add up to the token-level divergences."""

from __future__ import annotations

import pytest
import torch

from reference_impls import losses
from reference_impls.white_box.logits.fdistill import (
    STUDENT_TERMS,
    TEACHER_TERMS,
    FDistillStep,
    TeacherAndStudentSamples,
    fdistill_recipe,
)


def _case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (3, 5), generator=g)
    labels[0, :2] = -100
    return student, teacher, labels


def test_js_halves_on_the_same_sequences_add_up_to_the_jsd() -> None:
    s, t, y = _case()
    both = TEACHER_TERMS["js"](s, t, y) + STUDENT_TERMS["js"](s, t, y)
    assert torch.allclose(both.double(), losses.generalized_jsd(s, t, y, beta=0.5).double(), atol=1e-6)


def test_tvd_halves_add_up_to_the_tvd_and_kl_is_teacher_only() -> None:
    s, t, y = _case(1)
    assert torch.allclose(
        TEACHER_TERMS["tvd"](s, t, y) + STUDENT_TERMS["tvd"](s, t, y), losses.total_variation(s, t, y)
    )
    assert "kl" not in STUDENT_TERMS and "rkl" not in TEACHER_TERMS
    assert torch.equal(TEACHER_TERMS["kl"](s, t, y), losses.forward_kl(s, t, y))


def test_js_teacher_half_has_the_gradient_of_the_papers_cross_entropy_form() -> None:
    # The paper writes the teacher part as Σ −p log m; KL(p‖m) differs by the constant H(p).
    s, t, y = _case(2)
    (grad_ours,) = torch.autograd.grad(TEACHER_TERMS["js"](s, t, y), s)
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    mask = (y != -100).double()
    paper = 0.5 * ((-(p * torch.log(0.5 * (p + q))).sum(-1)) * mask).sum() / mask.sum()
    (grad_paper,) = torch.autograd.grad(paper, s)
    assert torch.allclose(grad_ours.double(), grad_paper, atol=1e-6)


def test_all_masked_gives_zero_with_finite_gradients() -> None:
    s, t, y = _case(3)
    y[:] = -100
    for name in ("js", "tvd"):
        loss = TEACHER_TERMS[name](s, t, y) + STUDENT_TERMS[name](s, t, y)
        (grad,) = torch.autograd.grad(loss, s)
        assert float(loss.detach()) == 0.0 and torch.isfinite(grad).all()


def test_source_draws_student_samples_only_when_needed() -> None:
    fixed = {
        "input_ids": torch.ones(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3),
        "labels": torch.ones(2, 3),
    }

    class Sampler:
        def from_student(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {key: value + 1 for key, value in batch.items()}

    batch, origin = TeacherAndStudentSamples(need_student=False).batch_for_step(0, 1, fixed, Sampler())
    assert origin == "teacher" and set(batch) == {
        "teacher_input_ids",
        "teacher_attention_mask",
        "teacher_labels",
    }
    batch, origin = TeacherAndStudentSamples(need_student=True).batch_for_step(0, 1, fixed, Sampler())
    assert (
        origin == "teacher+student"
        and int(batch["input_ids"][0, 0]) == 2
        and int(batch["teacher_input_ids"][0, 0]) == 1
    )


def test_recipe_checks_its_divergence() -> None:
    with pytest.raises(ValueError, match="kl, rkl, js, tvd"):
        fdistill_recipe(divergence="hellinger")
    assert fdistill_recipe("kl").data.need_student is False
    assert FDistillStep("rkl").divergence == "rkl"
