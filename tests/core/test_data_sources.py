"""The dynamic half of the data-source axis: sampling continuations, GKD's λ mixture, DistiLLM's
adaptive replay — their statistics and edge cases."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from reference_impls.core.data_sources import AdaptiveStudentReplay, MixedStudentData
from reference_impls.core.generation import generate_responses
from reference_impls.core.models import build_decoder, build_student_config
from reference_impls.core.sampling import prompt_ids, rollout_batch, sample_continuations
from reference_impls.core.tokenizer import build_tokenizer, encode_prompt, pad_id
from reference_impls.core.training import collate, train_student

EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


def _model(tokenizer: Any, seed: int) -> Any:
    return build_decoder(build_student_config(tokenizer), seed).eval()


class Scripted(torch.nn.Module):
    """A fake causal LM that emits a fixed token sequence per row (then EOS), whatever the input."""

    def __init__(self, scripts: list[list[int]], vocab: int = 8) -> None:
        super().__init__()
        self.scripts, self.vocab = scripts, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, input_ids: torch.Tensor, cache: int | None = None, **_: Any) -> Any:
        step = 0 if cache is None else cache
        logits = torch.full((len(self.scripts), input_ids.shape[1], self.vocab), -30.0)
        for row, script in enumerate(self.scripts):
            token = script[step] if step < len(script) else EOS
            logits[row, -1, token] = 30.0
        return SimpleNamespace(logits=logits, cache=step + 1)


def test_greedy_sampling_matches_generate(tokenizer: Any) -> None:
    model = _model(tokenizer, 0)
    prompts = ["copy: abc", "rev: hello", "sort: dbca"]
    rows = [encode_prompt(tokenizer, p) for p in prompts]
    sampled = sample_continuations(
        model, rows, eos_id=tokenizer.eos_token_id, pad_id=pad_id(tokenizer), max_new_tokens=10, greedy=True
    )
    texts = [
        tokenizer.decode([t for t in row if t != tokenizer.eos_token_id], skip_special_tokens=True)
        for row in sampled
    ]
    assert texts == generate_responses(model, tokenizer, prompts, max_new_tokens=10)


def test_teacher_mixing_at_alpha_one_follows_the_teacher(tokenizer: Any) -> None:
    student, teacher = _model(tokenizer, 0), _model(tokenizer, 1)
    rows = [encode_prompt(tokenizer, p) for p in ["copy: abc", "up: xy"]]
    kwargs = {
        "eos_id": tokenizer.eos_token_id,
        "pad_id": pad_id(tokenizer),
        "max_new_tokens": 8,
        "greedy": True,
    }
    mixed = sample_continuations(student, rows, mix_model=teacher, mix_alpha=1.0, **kwargs)
    assert mixed == sample_continuations(teacher, rows, **kwargs)


def test_sampling_is_reproducible_and_follows_the_distribution(tokenizer: Any) -> None:
    model = _model(tokenizer, 0)
    rows = [encode_prompt(tokenizer, "copy: ab")] * 400
    kwargs = {"eos_id": tokenizer.eos_token_id, "pad_id": pad_id(tokenizer), "max_new_tokens": 1}
    first = sample_continuations(model, rows, generator=torch.Generator().manual_seed(3), **kwargs)
    again = sample_continuations(model, rows, generator=torch.Generator().manual_seed(3), **kwargs)
    assert first == again
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([rows[0]])).logits[0, -1], -1)
    top = int(probs.argmax())
    share = sum(row[0] == top for row in first) / len(first)
    assert (
        abs(share - float(probs[top]))
        < 4 * (float(probs[top]) * (1 - float(probs[top])) / len(first)) ** 0.5 + 1e-3
    )


def test_rows_stop_at_their_own_eos_and_eos_at_step_one() -> None:
    model = Scripted([[EOS], [5, 6, EOS], [5, 5, 5, 5, 5, 5]])
    prompts = [[1, 4], [1], [1, 4, 4]]
    out = sample_continuations(model, prompts, eos_id=EOS, pad_id=PAD, max_new_tokens=4, greedy=True)
    assert out == [[EOS], [5, 6, EOS], [5, 5, 5, 5]]
    batch = collate([(p, [-100] * len(p)) for p in prompts], PAD)
    batch["labels"][0, 1] = 7  # a row's first labelled position ends its prompt
    assert prompt_ids(batch) == [[1], [1], [1, 4, 4]]


def test_rollout_batch_keeps_the_training_layout() -> None:
    model = Scripted([[EOS], [5, 6, EOS]])
    batch = collate([([1, 4, 3, 3, EOS], [-100, -100, 3, 3, EOS]), ([1, 3, EOS], [-100, 3, EOS])], PAD)
    rolled = rollout_batch(model, batch, eos_id=EOS, pad_id=PAD, max_new_tokens=5)
    assert rolled["input_ids"].tolist() == [[1, 4, EOS, PAD], [1, 5, 6, EOS]]
    assert rolled["labels"].tolist() == [[-100, -100, EOS, -100], [-100, 5, 6, EOS]]
    assert rolled["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_bad_sampling_arguments() -> None:
    model = Scripted([[EOS]])
    with pytest.raises(ValueError, match="temperature"):
        sample_continuations(model, [[1]], eos_id=EOS, pad_id=PAD, max_new_tokens=2, temperature=0)
    with pytest.raises(ValueError, match="mix_model"):
        sample_continuations(model, [[1]], eos_id=EOS, pad_id=PAD, max_new_tokens=2, mix_alpha=0.5)
    with pytest.raises(ValueError, match="at least one token"):
        sample_continuations(model, [[]], eos_id=EOS, pad_id=PAD, max_new_tokens=2)


@dataclass
class CountingSampler:
    calls: dict[str, int]

    def from_student(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls["student"] += 1
        return {**batch, "tag": torch.tensor(1)}

    def from_teacher(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls["teacher"] += 1
        return {**batch, "tag": torch.tensor(2)}


FIXED = {"input_ids": torch.ones(2, 3, dtype=torch.long)}


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_gkd_mixture_respects_lambda(lam: float) -> None:
    source, sampler, n = (
        MixedStudentData(lam=lam, seed=7),
        CountingSampler({"student": 0, "teacher": 0}),
        4000,
    )
    for step in range(n):
        source.next_batch(step, n, FIXED, sampler)
    share = sampler.calls["student"] / n
    assert abs(share - lam) <= 4 * (lam * (1 - lam) / n) ** 0.5
    assert source.origins.get("student", 0) == sampler.calls["student"]
    assert source.origins.get("dataset", 0) == n - sampler.calls["student"]


def test_gkd_seq_kd_uses_teacher_samples_off_policy() -> None:
    source, sampler = MixedStudentData(lam=0.0, seq_kd=True), CountingSampler({"student": 0, "teacher": 0})
    batch = source.next_batch(0, 10, FIXED, sampler)
    assert int(batch["tag"]) == 2 and source.origins == {"teacher": 1}
    with pytest.raises(ValueError, match=r"lam \(λ\) must be in \[0, 1\]"):
        MixedStudentData(lam=1.5)


def test_distillm_threshold_rises_only_on_a_validation_increase() -> None:
    source = AdaptiveStudentReplay(init_threshold=0.0, loss_eps=0.1)
    for loss, expected in [
        (2.0, 0.0),
        (2.05, 0.0),
        (2.11, 0.1),
        (2.15, 0.1),
        (2.2, 0.1),
        (2.21, 0.2),
        (1.0, 0.2),
    ]:
        source.on_validation(loss)
        assert source.threshold == pytest.approx(expected), loss
    for _ in range(20):  # capped at 1
        source.on_validation(source._previous_loss + 1)
    assert source.threshold == 1.0


def test_distillm_zero_threshold_never_samples() -> None:
    source, sampler = AdaptiveStudentReplay(), CountingSampler({"student": 0, "teacher": 0})
    for step in range(500):
        source.next_batch(step, 500, FIXED, sampler)
    assert sampler.calls["student"] == 0 and source.origins == {"dataset": 500}


def test_distillm_fills_the_buffer_then_replays_with_a_decaying_generation_ratio() -> None:
    n = 4000
    source = AdaptiveStudentReplay(init_threshold=0.6, capacity=5, seed=1)
    sampler = CountingSampler({"student": 0, "teacher": 0})
    fresh_in_first_half = 0
    for step in range(n):
        source.next_batch(step, n, FIXED, sampler)
        if step == n // 2 - 1:
            fresh_in_first_half = sampler.calls["student"]
    counts = source.origins
    # u < τ = 0.6 on about 60 % of the steps; fresh samples with probability τ·(1 − t/T): 30 % on average.
    assert abs((counts["student"] + counts["replay"]) / n - 0.6) < 0.04
    assert abs(counts["student"] / n - 0.3) < 0.04
    assert len(source.buffer) == 5
    # τ_gen decays linearly: expected 0.6·(1 − 1/4) = 45 % fresh in the first half, 15 % in the second.
    assert abs(fresh_in_first_half / (n // 2) - 0.45) < 0.05
    assert abs((counts["student"] - fresh_in_first_half) / (n // 2) - 0.15) < 0.05


def test_training_loop_requires_a_sampler_and_validation(tokenizer: Any) -> None:
    model = _model(tokenizer, 0)
    loader = [collate([([1, 4, 3, EOS], [-100, -100, 3, EOS])], PAD)]
    with pytest.raises(ValueError, match="pass a sampler"):
        train_student(
            model, loader, lambda s, t, y: s.sum(), 1, None, source=MixedStudentData(), progress=False
        )
    with pytest.raises(ValueError, match="needs validation_batches"):
        train_student(
            model,
            loader,
            lambda s, t, y: s.sum(),
            1,
            None,
            source=AdaptiveStudentReplay(),
            sampler=CountingSampler({"student": 0, "teacher": 0}),
            progress=False,
        )


def test_source_specs_parse_to_the_right_components() -> None:
    from reference_impls.core.data_sources import DatasetResponses, TeacherGenerated, parse_source

    assert isinstance(parse_source("dataset"), DatasetResponses)
    assert isinstance(parse_source("teacher"), TeacherGenerated)
    on_policy = parse_source("student:0.7")
    assert isinstance(on_policy, MixedStudentData) and on_policy.lam == 1.0 and on_policy.temperature == 0.7
    mixed = parse_source("mixed:0.25")
    assert mixed.lam == 0.25 and mixed.temperature == 0.9
    assert isinstance(parse_source("adaptive"), AdaptiveStudentReplay)
    for bad in ("nope", "mixed", "mixed:2", "student:x", "dataset:1"):
        with pytest.raises(ValueError, match="data source"):
            parse_source(bad)


def test_any_token_level_objective_takes_any_source_but_custom_steps_refuse() -> None:
    from kdatlas.runner import RunError, build_recipe, with_source

    recipe = with_source(build_recipe("reverse-kl", {}), "mixed:0.3")
    assert recipe.data.lam == 0.3 and recipe.method_id == "reverse-kl"
    with pytest.raises(RunError, match="own sampling and training step"):
        with_source(build_recipe("minillm", {}), "dataset")
