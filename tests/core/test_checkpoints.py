"""Checkpoints and resume of the training loop, and gradient accumulation's normalisation.

A run interrupted mid-step (here: an exception in the middle of step 5, after the checkpoint of
step 4) and resumed from its checkpoint must end with exactly the weights, curve and source state
of the uninterrupted run — with dropout on, so the global generator's state matters, and with
on-policy sources, whose coins, replay buffers, rollouts and sampling generator matter.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from reference_impls.core import training
from reference_impls.core.checkpoints import RunCheckpoints, slug
from reference_impls.core.data_sources import AdaptiveStudentReplay, MixedStudentData, OnlineSource
from reference_impls.core.models import build_decoder, build_student_config, build_teacher_config
from reference_impls.core.sampling import ModelSampler
from reference_impls.core.tokenizer import build_tokenizer, pad_id
from reference_impls.core.training import cross_entropy_objective, make_dataloader, train_student
from reference_impls.tasks.strings import make_split
from reference_impls.white_box.logits.minillm import minillm_recipe
from reference_impls.white_box.logits.word_level import forward_kl_recipe

STEPS = 6
TOKENIZER = build_tokenizer()


class Interrupted(Exception):
    """Stands in for the kill: raised in the middle of an optimizer step."""


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    config = build_student_config(TOKENIZER)
    config.attention_dropout = 0.2  # draws from the global generator at every training forward
    return build_decoder(config, seed=0), build_decoder(build_teacher_config(TOKENIZER), seed=1).eval()


def _loader(batch_size: int = 4, n: int = 16) -> Any:
    examples = make_split("train", n)
    return make_dataloader(
        TOKENIZER, [e.prompt for e in examples], [e.response for e in examples], batch_size=batch_size, seed=0
    )


def _train(
    recipe: Any, checkpoints: RunCheckpoints | None, *, interrupt_at_step: int | None = None, seed: int = 0
) -> tuple[list[float], torch.nn.Module, Any]:
    """A few steps of ``recipe`` on tiny models (fresh objects every call, as a new process has)."""
    student, teacher = _models()
    data, loss = copy.deepcopy(recipe.data), copy.deepcopy(recipe.loss)
    source = data if isinstance(data, OnlineSource) else None
    sampler = None
    if source is not None:
        sampler = ModelSampler(
            student, teacher, TOKENIZER.eos_token_id, pad_id(TOKENIZER), max_new_tokens=6,
            temperature=source.temperature, teacher_mix=getattr(source, "teacher_mix", 0.0), seed=3,
        )
    if isinstance(loss, training.StepLoss):
        loss.prepare(student, teacher)
    torch.manual_seed(seed)  # the resumed process starts from another global state
    calls = {"n": 0}
    weights = training._token_weights

    def counting(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == interrupt_at_step:
            raise Interrupted
        return weights(*args)

    training._token_weights = counting
    try:
        curve = train_student(
            student, _loader(), loss, STEPS, None, teacher, progress=False, source=source, sampler=sampler,
            validation_batches=_loader() if source is not None else None, checkpoints=checkpoints,
            description="Distilled student (test)",
        )
    finally:
        training._token_weights = weights
    return curve, student, source


def _interrupt(recipe: Any, root: Path, at_step: int) -> None:
    """A run killed in the middle of step ``at_step``, its checkpoints in ``root``."""
    with pytest.raises(Interrupted):
        _train(recipe, RunCheckpoints(root, every=2), interrupt_at_step=at_step)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


RECIPES = {
    "forward-kl on the dataset": forward_kl_recipe(),
    "GKD mixture (coin, student samples)": forward_kl_recipe().__class__(
        method_id="mixed", data=MixedStudentData(lam=0.5, seed=1), loss=forward_kl_recipe().loss
    ),
    "DistiLLM replay (threshold, buffer)": forward_kl_recipe().__class__(
        method_id="replay",
        data=AdaptiveStudentReplay(init_threshold=0.6, capacity=2, validations=3, seed=2),
        loss=forward_kl_recipe().loss,
    ),
    "MiniLLM (rollouts reused across steps)": minillm_recipe(ppo_epochs=3),
}


@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES.keys())
def test_a_run_interrupted_mid_step_resumes_to_the_same_weights(recipe: Any, tmp_path: Path) -> None:
    reference_curve, reference, reference_source = _train(recipe, RunCheckpoints(tmp_path / "a", every=2))
    _interrupt(recipe, tmp_path / "b", at_step=5)
    phase = tmp_path / "b" / "distilled-student-test"
    assert [p.name for p in phase.iterdir()] == ["step-000004"]  # older checkpoints removed
    curve, resumed, source = _train(recipe, RunCheckpoints(tmp_path / "b", every=2), seed=999)
    assert curve == reference_curve
    _assert_same_weights(resumed, reference)
    if source is not None:
        assert source.state_dict().keys() == reference_source.state_dict().keys()
        assert source.origins == reference_source.origins


def test_without_the_checkpoint_the_rerun_differs(tmp_path: Path) -> None:
    """The control: the restored state is what makes the resumed run equal, not luck."""
    recipe = RECIPES["GKD mixture (coin, student samples)"]
    _, reference, _ = _train(recipe, None)
    _, other, _ = _train(recipe, None, seed=999)  # same data, another global generator (dropout)
    assert any(not torch.equal(x, y) for x, y in zip(reference.parameters(), other.parameters(), strict=True))


def test_a_finished_phase_is_loaded_not_retrained(tmp_path: Path) -> None:
    calls = {"n": 0}

    def objective(student_logits: Any, teacher_logits: Any, labels: Any) -> Any:
        calls["n"] += 1
        return cross_entropy_objective(student_logits, teacher_logits, labels)

    recipe = forward_kl_recipe().__class__(method_id="ce", data=forward_kl_recipe().data, loss=objective)
    curve, trained, _ = _train(recipe, RunCheckpoints(tmp_path, every=100))
    assert calls["n"] == STEPS
    again, loaded, _ = _train(recipe, RunCheckpoints(tmp_path, every=100))
    assert calls["n"] == STEPS  # no step ran
    assert again == curve
    _assert_same_weights(loaded, trained)


def test_a_save_cut_off_by_a_kill_is_ignored(tmp_path: Path) -> None:
    recipe = forward_kl_recipe()
    _interrupt(recipe, tmp_path, at_step=4)
    phase = tmp_path / "distilled-student-test"
    (phase / ".step-000004").mkdir()  # a staging folder whose writer was killed
    (phase / ".step-000004" / "model.safetensors").write_bytes(b"partial")
    assert RunCheckpoints(tmp_path, every=2).phase("Distilled student (test)").latest().name == "step-000002"
    curve, resumed, _ = _train(recipe, RunCheckpoints(tmp_path, every=2))
    reference_curve, reference, _ = _train(recipe, None)
    assert curve == reference_curve
    _assert_same_weights(resumed, reference)


def test_a_checkpoint_of_another_process_count_is_refused(tmp_path: Path) -> None:
    recipe = forward_kl_recipe()
    _interrupt(recipe, tmp_path, at_step=3)
    shared_path = tmp_path / "distilled-student-test" / "step-000002" / "optimizer.pt"
    shared = torch.load(shared_path, weights_only=True)
    torch.save({**shared, "processes": 2}, shared_path)
    with pytest.raises(ValueError, match="written by 2 processes"):
        _train(recipe, RunCheckpoints(tmp_path, every=2))


def test_phases_get_their_own_folders() -> None:
    checkpoints = RunCheckpoints(Path("runs/x/checkpoints"), every=10)
    names = [checkpoints.phase(d).directory.name for d in ("Lion imitation stage 1", "Stage", "Stage")]
    assert names == ["lion-imitation-stage-1", "stage", "stage-2"]
    assert slug("Distilled student (forward-kl)") == "distilled-student-forward-kl"
    with pytest.raises(ValueError, match="checkpoint_every"):
        RunCheckpoints(Path("x"), every=0)


# --- gradient accumulation ------------------------------------------------------------------------


def _accumulated(batch_size: int, accumulation: int, steps: int = 3) -> torch.nn.Module:
    student = build_decoder(build_student_config(TOKENIZER), seed=0).double()
    teacher = build_decoder(build_teacher_config(TOKENIZER), seed=1).double().eval()
    train_student(
        student, _loader(batch_size, n=48), forward_kl_recipe().loss, steps, None, teacher, progress=False,
        gradient_accumulation=accumulation,
    )
    return student


@pytest.mark.convention("accumulation-normaliser")
def test_accumulated_batches_train_exactly_as_one_large_batch() -> None:
    """Batches of 4 accumulated twice = batches of 8 (the loader's order is the same permutation),
    although the two halves hold different numbers of target tokens."""
    halves = next(iter(_loader(4, n=48))), next(iter(_loader(8, n=48)))
    assert training.target_tokens(halves[0]) * 2 != training.target_tokens(halves[1])  # unequal halves
    large, accumulated = _accumulated(8, 1), _accumulated(4, 2)
    for a, b in zip(large.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_the_mean_of_batch_means_is_not_the_large_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mistake exact normalisation avoids (the pre-4.46 transformers bug): weighting every
    micro-batch 1/k instead of by its tokens trains a different model."""
    large = _accumulated(8, 1)
    monkeypatch.setattr(training, "_token_weights", lambda batches, accelerator: ([0.5, 0.5], [0.5, 0.5]))
    naive = _accumulated(4, 2)
    difference = max(float((a - b).abs().max()) for a, b in zip(large.state_dict().values(), naive.state_dict().values(), strict=True))
    assert difference > 1e-6


def test_accumulation_must_be_positive() -> None:
    with pytest.raises(ValueError, match="gradient_accumulation"):
        _accumulated(4, 0, steps=1)
