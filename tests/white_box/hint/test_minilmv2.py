"""MiniLMv2 (`reference_impls.white_box.hint.minilmv2`): query, key and value relations over
relation heads, for any head counts."""

from __future__ import annotations

import copy

import pytest
import torch

from reference_impls.white_box.hint.minilmv2 import MiniLMv2Loss, minilmv2_recipe
from tests.white_box.hint.conftest import make_encoder


def test_any_head_count_is_distilled_and_the_loss_trains(tokenizer, batch) -> None:
    student = make_encoder(tokenizer, teacher=False, num_attention_heads=2)  # the teacher has 4
    teacher = make_encoder(tokenizer, teacher=True, seed=1).eval()
    loss = MiniLMv2Loss(relation_heads=4)
    loss.prepare(student, teacher)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    before = loss(student, teacher, batch, None).item()
    for _ in range(10):
        optimizer.zero_grad()
        loss(student, teacher, batch, None).backward()
        optimizer.step()
    assert 0 < loss(student, teacher, batch, None).item() < before


def test_zero_for_a_copy_of_the_teacher_at_its_last_layer_only(models, batch) -> None:
    _, teacher = models
    twin = copy.deepcopy(teacher)
    assert MiniLMv2Loss(teacher_layer=-1)(twin, teacher, batch, None).item() == pytest.approx(0.0, abs=1e-6)
    # The copy's last layer against the teacher's second: not the same relations.
    assert MiniLMv2Loss(teacher_layer=1)(twin, teacher, batch, None).item() > 1e-3


def test_bad_layers_and_relation_heads_are_refused(models) -> None:
    student, teacher = models
    with pytest.raises(ValueError, match="outside the teacher's 4 layers"):
        MiniLMv2Loss(teacher_layer=4).prepare(student, teacher)
    with pytest.raises(ValueError, match="must divide the student's width 64"):
        MiniLMv2Loss(relation_heads=3).prepare(student, teacher)
    with pytest.raises(ValueError, match="relation_heads"):
        minilmv2_recipe(relation_heads=0)
