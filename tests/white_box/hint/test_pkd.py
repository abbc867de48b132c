"""Patient KD (`reference_impls.white_box.hint.pkd`): vanilla KD plus the patient [CLS] term, in the
code's and the paper's form."""

from __future__ import annotations

import copy

import pytest
import torch

from reference_impls.losses import normalized_distance, vanilla_kd_loss
from reference_impls.white_box.hint.pkd import PatientLoss, pkd_recipe


def _loss(student, teacher, batch, **changes) -> tuple[PatientLoss, torch.Tensor]:
    settings = {
        "alpha": 0.7,
        "temperature": 10.0,
        "beta": 500.0,
        "strategy": "skip",
        "patience": "code",
        **changes,
    }
    loss = PatientLoss(**settings)
    loss.prepare(student, teacher)
    return loss, loss(student, teacher, batch, None)


def test_beta_zero_is_vanilla_kd_on_the_class_logits(models, batch) -> None:
    student, teacher = models
    _, value = _loss(student, teacher, batch, beta=0.0)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    expected = vanilla_kd_loss(
        student(**inputs).logits, teacher(**inputs).logits, batch["label"], temperature=10.0, alpha=0.7
    )
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_patient_term_is_the_normalised_cls_distance_in_either_form(models, batch) -> None:
    student, teacher = models
    torch.manual_seed(0)
    loss, kd_only = _loss(student, teacher, batch, beta=0.0)
    torch.manual_seed(0)  # the same projector
    loss, code = _loss(student, teacher, batch, beta=1.0)
    torch.manual_seed(0)
    _, paper = _loss(student, teacher, batch, beta=1.0, patience="paper")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    s = student(**inputs, output_hidden_states=True).hidden_states
    t = teacher(**inputs, output_hidden_states=True).hidden_states
    assert loss.mapping == {1: 2}  # PKD-Skip, 2 of 4 layers: the student's layer 1 learns from layer 2
    distance = normalized_distance(loss.projectors["cls"](s[1][:, 0]), t[2][:, 0])
    assert (paper - kd_only).item() == pytest.approx(distance.item(), rel=1e-5)
    assert (code - kd_only).item() == pytest.approx(distance.item() / teacher.config.hidden_size, rel=1e-5)


def test_a_student_that_is_the_teacher_has_no_patient_loss(models, batch) -> None:
    _, teacher = models
    twin = copy.deepcopy(teacher)  # same width: the projector is the identity
    loss, with_patience = _loss(twin, teacher, batch, strategy="last")
    _, without = _loss(twin, teacher, batch, beta=0.0)
    assert isinstance(loss.projectors["cls"], torch.nn.Identity)
    assert with_patience.item() == pytest.approx(without.item(), abs=1e-6)


def test_the_projector_trains_with_the_student_and_is_released(models, batch) -> None:
    student, teacher = models
    loss, value = _loss(student, teacher, batch)
    value.backward()
    assert loss.projectors["cls"].weight.grad is not None and "hint_projectors" in dict(
        student.named_children()
    )
    loss.release(student)
    assert "hint_projectors" not in dict(student.named_children())


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="PKD-Skip"):
        pkd_recipe(strategy="middle")
    with pytest.raises(ValueError, match="patience"):
        pkd_recipe(patience="mean")
    with pytest.raises(ValueError, match="alpha"):
        pkd_recipe(alpha=1.5)
