"""Sequence-level KD: the recipe is plain token cross-entropy on the teacher's greedy decodings,
and the teacher is never run for logits in training."""

from __future__ import annotations

import pytest
import torch

from reference_impls.core.data_sources import TeacherGenerated
from reference_impls.core.training import cross_entropy_objective, needs_teacher
from reference_impls.white_box.logits.seqkd import seqkd_recipe


def test_recipe_is_cross_entropy_on_greedy_teacher_outputs() -> None:
    recipe = seqkd_recipe()
    assert recipe.method_id == "seqkd" and recipe.hyperparameters == {"decoding": "greedy"}
    assert recipe.data == TeacherGenerated(decoding="greedy")
    assert recipe.data.describe() == {"name": "teacher", "decoding": "greedy"}
    assert recipe.loss is cross_entropy_objective
    assert not needs_teacher(recipe.loss)  # the teacher decodes once, its logits are never read


def test_loss_is_the_mean_negative_log_likelihood_of_the_labelled_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([[-100, 3, 1, 5], [-100, -100, 0, 2]])
    got = seqkd_recipe().loss(logits, None, labels)  # no teacher logits: it learns from text
    log_q = torch.log_softmax(logits, -1)
    nll = [-log_q[b, t, labels[b, t]] for b in range(2) for t in range(4) if labels[b, t] != -100]
    assert got.item() == pytest.approx(torch.stack(nll).mean().item(), rel=1e-10)


def test_only_greedy_decoding() -> None:
    with pytest.raises(ValueError, match="use 'greedy'"):
        seqkd_recipe(decoding="beam")
