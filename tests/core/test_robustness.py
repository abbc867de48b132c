"""The golden metric (KL from the oracle) and the robustness study, checked against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.core.generation import generate_responses
from reference_impls.core.metrics import oracle_kl, sequence_log_probs
from reference_impls.core.models import build_student
from reference_impls.core.robustness import attack_success_rate, robustness_metrics, strongest_edits
from reference_impls.core.tokenizer import build_tokenizer, encode_pair
from reference_impls.tasks.strings import (
    PROMPT_EDITS,
    Example,
    is_correct,
    make_split,
    oracle_distribution,
    prompt_edits,
    with_rationale,
)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = build_tokenizer()
    model = build_student(tokenizer, 0).eval()
    # A random initialisation is nearly uniform; sharpen it so that prompts and edits matter.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8)
    return model, tokenizer


def _single_log_prob(model, tokenizer, prompt: str, response: str) -> float:
    """log q(response ⊕ EOS | prompt) from one unbatched, unpadded forward pass."""
    ids, labels = encode_pair(tokenizer, prompt, response)
    with torch.no_grad():
        log_q = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    return sum(log_q[t - 1, ids[t]].item() for t in range(1, len(ids)) if labels[t] != -100)


def test_oracle_distribution_is_the_generators():
    vowel = next(e for e in make_split("test", 60) if e.task == "vowel" and len(e.answers) > 1)
    assert oracle_distribution(vowel) == {a: 1 / len(vowel.answers) for a in vowel.answers}
    rev = next(e for e in make_split("test", 14) if e.task == "rev")
    assert oracle_distribution(rev) == {rev.input[::-1]: 1.0}
    with pytest.raises(ValueError, match="JSONL"):
        oracle_distribution(Example("jsonl", "p", "r", "", ("r",), 0, "p"))
    add = next(e for e in make_split("test", 14) if e.task == "add")
    with pytest.raises(ValueError, match="rationale"):
        oracle_distribution(with_rationale(add))


def test_sequence_log_probs_equal_unbatched_passes(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    pairs = [(e.prompt, e.response) for e in make_split("test", 9)]
    batched = sequence_log_probs(model, tokenizer, pairs, batch_size=4)
    for (prompt, response), value in zip(pairs, batched, strict=True):
        assert value == pytest.approx(_single_log_prob(model, tokenizer, prompt, response), abs=1e-4)


def test_oracle_kl_is_the_sequence_level_kl_from_the_oracle(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    examples = make_split("test", 21)  # three of each task, vowels with several answers among them
    assert any(len(e.answers) > 1 for e in examples)
    expected = 0.0
    for e in examples:
        o = 1 / len(e.answers)
        expected += sum(o * (math.log(o) - _single_log_prob(model, tokenizer, e.prompt, a)) for a in e.answers)
    value = oracle_kl(model, tokenizer, examples)
    assert value == pytest.approx(expected / len(examples), rel=1e-5)
    assert value > 0


def test_the_strongest_edit_minimises_the_answer_probability(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    examples = make_split("test", 14)
    chosen = strongest_edits(model, tokenizer, examples)
    assert len(prompt_edits(examples[0])) == len(PROMPT_EDITS)
    for example, attacked in zip(examples, chosen, strict=True):
        assert attacked.answers == example.answers and attacked.input == example.input
        scores = {
            edit.prompt: math.log(sum(math.exp(_single_log_prob(model, tokenizer, edit.prompt, a)) for a in edit.answers))
            for edit in prompt_edits(example)
        }
        assert scores[attacked.prompt] == pytest.approx(min(scores.values()), abs=1e-4)


def test_attack_success_rate_counts_broken_correct_answers(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    examples = make_split("test", 14)
    # Pretend the model answered every item right: the rate is then the share of items whose
    # strongest edit gives a wrong greedy answer.
    truth = [e.response for e in examples]
    attacked = strongest_edits(model, tokenizer, examples)
    answers = generate_responses(model, tokenizer, [e.prompt for e in attacked], max_new_tokens=8)
    expected = sum(not is_correct(a, e) for a, e in zip(answers, attacked, strict=True)) / len(examples)
    assert attack_success_rate(model, tokenizer, examples, truth, max_new_tokens=8) == pytest.approx(expected)
    # Only correct clean answers are attacked; none correct → nothing to attack, no rate.
    assert attack_success_rate(model, tokenizer, examples, ["#"] * len(examples), max_new_tokens=8) is None


def test_robustness_metrics_report_the_ood_split(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    test = make_split("test", 7)
    metrics = robustness_metrics(model, tokenizer, test, [e.response for e in test], ood_size=7, max_new_tokens=8)
    assert set(metrics) == {"attack_success_rate", "ood_exact_match", "ood_rouge_l"}
    unanswered = robustness_metrics(model, tokenizer, test, ["#"] * len(test), ood_size=7, max_new_tokens=8)
    assert set(unanswered) == {"ood_exact_match", "ood_rouge_l"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
