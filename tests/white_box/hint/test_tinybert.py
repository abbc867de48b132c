"""TinyBERT (`reference_impls.white_box.hint.tinybert`): layer-wise MSE on embeddings, hidden states
and unnormalised attention scores, then the predictions."""

from __future__ import annotations

import copy

import pytest
import torch

from reference_impls.losses import forward_kl
from reference_impls.white_box.features import attention_scores, forward_with_projections
from reference_impls.white_box.hint.tinybert import TinyBERTLoss, tinybert_recipe
from tests.white_box.hint.conftest import make_encoder


def test_scores_from_the_projections_are_the_models_own(models, batch) -> None:
    """softmax(QKᵀ/√d + mask) of the hooked projections is what the model's attention returns."""
    _, teacher = models
    out, qkv = forward_with_projections(teacher, batch, [0, 3], attentions=True)
    heads = teacher.config.num_attention_heads
    for layer in (0, 3):
        scores = attention_scores(qkv[layer]["query"], qkv[layer]["key"], heads)
        masked = scores.masked_fill(batch["attention_mask"][:, None, None, :] == 0, float("-inf"))
        assert torch.allclose(masked.softmax(-1), out.attentions[layer], atol=1e-6)


def test_the_two_stages_follow_the_readme_split(models, batch) -> None:
    student, teacher = models
    loss = TinyBERTLoss(10 / 13, 1.0, True)
    loss.prepare(student, teacher)
    loss.schedule(0, 13)
    assert loss.intermediate
    loss.schedule(10, 13)
    assert not loss.intermediate  # steps 10..12: the prediction stage
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    expected = forward_kl(student(**inputs).logits, teacher(**inputs).logits, temperature=1.0)
    assert loss(student, teacher, batch, None).item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_student_that_is_the_teacher_has_no_layer_loss(models, batch) -> None:
    _, teacher = models
    twin = copy.deepcopy(teacher)
    loss = TinyBERTLoss(1.0, 1.0, shared_projection=False)
    loss.prepare(twin, teacher)
    assert set(loss.projectors) == {"embeddings", "hidden"}  # the paper's W_e and W_h (identity here)
    assert loss(twin, teacher, batch, None).item() == pytest.approx(0.0, abs=1e-8)


def test_layer_losses_train_the_student(models, batch) -> None:
    student, teacher = models
    loss = TinyBERTLoss(1.0, 1.0, True)
    loss.prepare(student, teacher)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    before = loss(student, teacher, batch, None).item()
    for _ in range(10):
        optimizer.zero_grad()
        loss(student, teacher, batch, None).backward()
        optimizer.step()
    assert loss(student, teacher, batch, None).item() < before


def test_heads_must_match_and_epochs_must_make_sense(tokenizer) -> None:
    two_heads = make_encoder(tokenizer, teacher=False, num_attention_heads=2)
    with pytest.raises(ValueError, match="minilmv2"):
        TinyBERTLoss(0.5, 1.0, True).prepare(two_heads, make_encoder(tokenizer, teacher=True))
    with pytest.raises(ValueError, match="not both 0"):
        tinybert_recipe(intermediate_epochs=0, prediction_epochs=0)
    assert tinybert_recipe().loss.intermediate_fraction == pytest.approx(10 / 13)
