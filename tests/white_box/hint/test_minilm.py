"""MiniLM (`reference_impls.white_box.hint.minilm`): last-layer attention and value-relation KL,
then fine-tuning on the labels."""

from __future__ import annotations

import copy

import pytest

from reference_impls.core.encoders import LabelCrossEntropy
from reference_impls.losses import attention_kl, relation_kl
from reference_impls.white_box.features import forward_with_projections
from reference_impls.white_box.hint.minilm import MiniLMLoss, minilm_recipe
from tests.white_box.hint.conftest import make_encoder


def test_the_distillation_is_attention_transfer_plus_value_relation(models, batch) -> None:
    student, teacher = models
    loss = MiniLMLoss(0.5)
    loss.prepare(student, teacher)
    loss.schedule(0, 10)
    s, s_qkv = forward_with_projections(student, batch, [1], attentions=True)
    t, t_qkv = forward_with_projections(teacher, batch, [3], attentions=True)
    mask = batch["attention_mask"]
    expected = attention_kl(s.attentions[-1], t.attentions[-1], mask) + relation_kl(
        s_qkv[1]["value"], t_qkv[3]["value"], 4, mask
    )
    assert loss(student, teacher, batch, None).item() == pytest.approx(expected.item(), rel=1e-5)


def test_zero_for_a_copy_of_the_teacher_and_cross_entropy_after_the_distillation(models, batch) -> None:
    student, teacher = models
    loss = MiniLMLoss(0.5)
    twin = copy.deepcopy(teacher)
    loss.schedule(0, 10)
    assert loss(twin, teacher, batch, None).item() == pytest.approx(0.0, abs=1e-6)
    loss.schedule(5, 10)  # the fine-tuning half
    expected = LabelCrossEntropy()(student, None, batch, None)
    assert loss(student, None, batch, None).item() == pytest.approx(expected.item(), rel=1e-6)


def test_heads_must_match(tokenizer) -> None:
    with pytest.raises(ValueError, match="minilmv2"):
        MiniLMLoss().prepare(
            make_encoder(tokenizer, teacher=False, num_attention_heads=2),
            make_encoder(tokenizer, teacher=True),
        )
    with pytest.raises(ValueError, match="distil_fraction"):
        minilm_recipe(distil_fraction=1.5)
