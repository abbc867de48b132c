"""MiniMA: the student is the teacher pruned to about ``size_ratio`` of its parameters (gradient
importance on the training examples), then trained with forward KL. The pruning itself is tested
in tests/white_box/test_pruning.py."""

from __future__ import annotations

import copy

import pytest
import torch

from reference_impls import losses
from reference_impls.core.data_sources import DatasetResponses
from reference_impls.core.logits_loss import WordLevelObjective
from reference_impls.core.models import build_decoder, build_teacher_config, count_parameters
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.core.training import make_dataloader
from reference_impls.tasks.strings import make_split
from reference_impls.white_box.logits.minima import PrunedStudent, minima_recipe
from reference_impls.white_box.pruning import prune_llama, student_shape


def test_recipe_prunes_the_teacher_then_distils_with_forward_kl() -> None:
    recipe = minima_recipe()
    assert recipe.method_id == "minima"
    assert recipe.hyperparameters == {"size_ratio": 0.4, "importance": "gradient", "temperature": 1.0}
    assert isinstance(recipe.data, DatasetResponses)
    assert recipe.loss == WordLevelObjective("minima", losses.forward_kl, {"temperature": 1.0})
    assert recipe.students.build == PrunedStudent(size_ratio=0.4, importance="gradient")
    assert recipe.students.tokenizer is None  # pruned from the teacher: the same vocabulary
    assert recipe.students.build.describe() == {
        "builder": "minima-pruning",
        "size_ratio": 0.4,
        "importance": "gradient",
        "calibration_examples": 128,
    }


def test_loss_is_the_token_forward_kl() -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    labels = torch.tensor([[-100, 1, 2], [0, 4, -100]])
    log_p, log_q = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
    expected = (log_p.exp() * (log_p - log_q)).sum(-1)[labels != -100].mean()
    torch.testing.assert_close(minima_recipe().loss(student, teacher, labels), expected)


def test_pruned_student_is_the_closest_shape_with_gradient_importance() -> None:
    tokenizer = build_tokenizer()
    teacher = build_decoder(build_teacher_config(tokenizer), seed=0).eval()
    before = copy.deepcopy(teacher.state_dict())
    train = make_split("train", 40)
    student = PrunedStudent(size_ratio=0.4, calibration_examples=32)(teacher, tokenizer, train, seed=0)

    ratio = count_parameters(student) / count_parameters(teacher)
    assert abs(ratio - 0.4) < 0.05
    shape = student_shape(teacher, 0.4)
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (
        shape["num_layers"],
        shape["hidden_size"],
    )
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # teacher unchanged
    # The same structures as pruning by hand with the first 32 examples' gradients.
    batches = make_dataloader(
        tokenizer,
        [e.prompt for e in train[:32]],
        [e.response for e in train[:32]],
        batch_size=16,
        shuffle=False,
    )
    by_hand = prune_llama(teacher, **shape, importance="gradient", calibration_batches=batches)
    for (name, a), b in zip(student.state_dict().items(), by_hand.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="importance must be one of"):
        minima_recipe(importance="random")
    for ratio in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"size_ratio must be in \(0, 1\)"):
            minima_recipe(size_ratio=ratio)
