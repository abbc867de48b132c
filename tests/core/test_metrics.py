"""Metrics on hand-computed cases: exact match, LCS / ROUGE-L, token-level KL to the teacher."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.core.metrics import (
    exact_match,
    lcs_length,
    mean_rouge_l,
    rouge_l,
    token_divergence_to_teacher,
)
from reference_impls.core.models import build_decoder, build_student_config
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.tasks.strings import Example


def example(prompt: str, *answers: str) -> Example:
    return Example("t", prompt, answers[0], "", tuple(answers), 0, prompt)


def test_exact_match_accepts_any_valid_answer() -> None:
    examples = [example("p1", "a", "e"), example("p2", "abc"), example("p3", "12")]
    assert exact_match(["e", " abc\n", "13"], examples) == pytest.approx(2 / 3)
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], examples)


def test_lcs_hand_cases() -> None:
    assert lcs_length("abcde", "ace") == 3
    assert lcs_length("abc", "def") == 0
    assert lcs_length("", "abc") == 0
    assert lcs_length("AGGTAB", "GXTXAYB") == 4


def test_rouge_l_hand_cases() -> None:
    # LCS("abcd", "abxd") = 3: P = R = 3/4.
    assert rouge_l("abcd", "abxd") == pytest.approx(0.75)
    # LCS("ab", "abcd") = 2: P = 1, R = 1/2, F1 = 2/3.
    assert rouge_l("ab", "abcd") == pytest.approx(2 / 3)
    assert rouge_l("abc", "abc") == 1.0
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "abc") == 0.0
    assert rouge_l("the cat sat", "the cat on the mat", unit="word") == pytest.approx(
        2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5)
    )
    with pytest.raises(ValueError):
        rouge_l("a", "b", unit="byte")


def test_word_rouge_l_tokenises_like_rouge_score() -> None:
    # rouge_score's default tokenizer: lower-case, anything but a-z0-9 separates words, so case
    # and punctuation do not count ("Paris." matches "paris"); no stemming ("cats" != "cat").
    assert rouge_l("The capital is Paris.", "the capital is paris", unit="word") == 1.0
    assert rouge_l("well-known", "well known", unit="word") == 1.0
    # LCS(["two", "cats"], ["two", "cat"]) = 1: P = R = 1/2.
    assert rouge_l("Two cats", "two cat", unit="word") == pytest.approx(0.5)
    assert rouge_l("...", "!", unit="word") == 1.0  # no words on either side


def test_mean_rouge_l_takes_the_best_answer() -> None:
    examples = [example("p", "xyz", "abc"), example("q", "abcd")]
    assert mean_rouge_l(["abc", "abxd"], examples) == pytest.approx((1.0 + 0.75) / 2)


class _FixedLogits(torch.nn.Module):
    """A stand-in causal LM whose next-token logits are the same at every position."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        return type("Output", (), {"logits": self.logits.expand(*input_ids.shape, -1)})()


def test_token_kl_matches_a_hand_computed_value() -> None:
    tokenizer = build_tokenizer()
    vocab = len(tokenizer)
    # Teacher: all mass split 3:1 between tokens 0 and 1 (finite logits elsewhere far below).
    teacher_logits = [math.log(0.75), math.log(0.25)] + [-1e4] * (vocab - 2)
    student_logits = [math.log(0.5), math.log(0.5)] + [-1e4] * (vocab - 2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    examples = [example("rev: ab =", "ba"), example("up: abc =", "ABC")]
    kl = token_divergence_to_teacher(
        _FixedLogits(student_logits), _FixedLogits(teacher_logits), tokenizer, examples
    )
    assert kl == pytest.approx(expected, rel=1e-5)
    teacher, student = _FixedLogits(teacher_logits), _FixedLogits(student_logits)
    reverse = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert token_divergence_to_teacher(
        student, teacher, tokenizer, examples, measure="reverse-kl"
    ) == pytest.approx(reverse, rel=1e-5)
    tvd = 0.5 * (abs(0.75 - 0.5) + abs(0.25 - 0.5))
    assert token_divergence_to_teacher(
        student, teacher, tokenizer, examples, measure="total-variation"
    ) == pytest.approx(tvd, rel=1e-5)
    with pytest.raises(ValueError, match="unknown measure"):
        token_divergence_to_teacher(student, teacher, tokenizer, examples, measure="hellinger")


def test_token_kl_is_zero_for_identical_models_and_positive_otherwise() -> None:
    tokenizer = build_tokenizer()
    config = build_student_config(tokenizer)
    a, b = build_decoder(config, 0), build_decoder(config, 1)
    examples = [example("rev: ab =", "ba"), example("copy: abcde =", "abcde")]
    assert token_divergence_to_teacher(a, a, tokenizer, examples) == pytest.approx(0.0, abs=1e-6)
    assert token_divergence_to_teacher(a, b, tokenizer, examples) > 0


def test_token_kl_averages_over_response_tokens_only() -> None:
    # Same per-token KL everywhere, so the mean must not depend on prompt or response lengths
    # or on how the examples are batched.
    tokenizer = build_tokenizer()
    vocab = len(tokenizer)
    teacher = _FixedLogits([0.0] * vocab)
    student = _FixedLogits([1.0] + [0.0] * (vocab - 1))
    short = [example("a =", "b")]
    mixed = [example("a =", "b"), example("a much longer prompt =", "and response")]
    one = token_divergence_to_teacher(student, teacher, tokenizer, short)
    assert token_divergence_to_teacher(student, teacher, tokenizer, mixed, batch_size=1) == pytest.approx(one)
    assert token_divergence_to_teacher(student, teacher, tokenizer, mixed) == pytest.approx(one)
