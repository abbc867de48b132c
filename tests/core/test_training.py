"""The training loop's fused path (hidden states + LM heads) agrees with the readable logits path."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reference_impls.core import training
from reference_impls.core.models import build_decoder, build_student, build_teacher_config
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.core.training import (
    FUSED_MIN_LOGITS,
    cross_entropy_objective,
    make_dataloader,
    train_student,
    use_fused_path,
)
from reference_impls.tasks.strings import make_split
from reference_impls.white_box.logits.word_level import (
    generalized_jsd_recipe,
    reverse_kl_recipe,
    skew_forward_kl_recipe,
)

STEPS = 6


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


def _train(tokenizer: Any, objective: Any, **kwargs: Any) -> tuple[list[float], torch.nn.Module]:
    """A few float64 steps of a tiny student against a tiny teacher."""
    examples = make_split("train", 24)
    batches = make_dataloader(
        tokenizer, [e.prompt for e in examples], [e.response for e in examples], batch_size=8, seed=0
    )
    student = build_student(tokenizer, seed=0).double()
    teacher = build_decoder(build_teacher_config(tokenizer), seed=1).double()
    curve = train_student(student, batches, objective, STEPS, None, teacher, progress=False, **kwargs)
    return curve, student


@pytest.mark.parametrize(
    "recipe",
    [generalized_jsd_recipe(beta=0.3, temperature=1.5), reverse_kl_recipe(), skew_forward_kl_recipe()],
    ids=lambda r: r.method_id,
)
def test_fused_and_logits_paths_give_the_same_training_run(tokenizer: Any, recipe: Any) -> None:
    reference, reference_student = _train(tokenizer, recipe.loss, fused=False)
    fused, fused_student = _train(tokenizer, recipe.loss, fused=True)
    assert reference[-1] != reference[0]  # the run moves
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(reference), rtol=1e-9, atol=1e-12)
    for a, b in zip(fused_student.parameters(), reference_student.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_shared_vocabulary_cut_is_applied_on_both_paths(tokenizer: Any) -> None:
    objective = generalized_jsd_recipe().loss
    cut = len(tokenizer) - 3  # as for heads padded to different sizes
    reference, _ = _train(tokenizer, objective, fused=False, vocab_size=cut)
    fused, _ = _train(tokenizer, objective, fused=True, vocab_size=cut)
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(reference), rtol=1e-9, atol=1e-12)


def test_default_switches_on_the_threshold(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    objective = reverse_kl_recipe().loss
    # The embedded models (vocabulary 100, a few thousand tokens a batch) stay on the logits path.
    assert not use_fused_path(objective, 32 * 120, len(tokenizer), None)
    assert use_fused_path(objective, FUSED_MIN_LOGITS // 128_256 + 1, 128_256, None)
    assert not use_fused_path(cross_entropy_objective, 10**6, 10**6, None)  # no fused form
    with pytest.raises(ValueError, match="from_hidden"):
        use_fused_path(cross_entropy_objective, 1, 1, True)

    calls = []
    original = type(objective).from_hidden

    def spy(self: Any, *args: Any) -> torch.Tensor:
        calls.append(1)
        return original(self, *args)

    reference, _ = _train(tokenizer, objective)  # default: below the threshold
    assert calls == []
    monkeypatch.setattr(training, "FUSED_MIN_LOGITS", 1)
    monkeypatch.setattr(type(objective), "from_hidden", spy)
    by_default, _ = _train(tokenizer, objective)
    assert len(calls) == STEPS
    torch.testing.assert_close(torch.tensor(by_default), torch.tensor(reference), rtol=1e-9, atol=1e-12)
