"""The survey's robustness study at toy scale: an adversarial split and an out-of-distribution split.

The survey's evaluation section (arXiv 2407.01885) measures two kinds of robustness of distilled
students: the *attack success rate* of adversarial inputs (AdvGLUE, ANLI) and F1 on
*out-of-distribution* inputs (Flipkart, DDXPlus), over GPT-2, OPT and LLaMA students. Both are reproduced on the string suite:

* **Adversarial** — for every held-out item the student answers correctly, the attacker tries
  every meaning-preserving prompt edit of `tasks.strings.PROMPT_EDITS` (extra spaces around the
  task name; 20% of the training prompts carry such noise) and keeps the one under which *this*
  student's probability of a valid answer is lowest: a white-box, score-based attack chosen
  against each student separately. The attack succeeds when the student's greedy answer to the
  edited prompt is wrong. Attack success rate = successes / items answered correctly before.
* **Out-of-distribution** — the suite's ``ood`` split (longer strings, three-digit numbers),
  scored by exact match and character ROUGE-L F1 (the survey's F1 on single-word answers).

The instruction suite's plain-format evaluations (held-out instructions, typed queries) get the
same attack (its prompts have the same ``"<task>: <input> ="`` shape); each of its evaluations
also has an ``ood`` split (longer inputs), scored in `reference_impls.run.instructions`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.generation import generate_responses
from reference_impls.core.metrics import exact_match, mean_rouge_l, sequence_log_probs
from reference_impls.tasks.strings import Example, is_correct, make_split, prompt_edits


def _log_sum_exp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def strongest_edits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    vocab_size: int | None = None,
) -> list[Example]:
    """Per example, the prompt edit under which ``model`` gives its valid answers the least
    probability (``log Σ_a q(a ⊕ EOS | edited prompt)``; ties go to the first edit)."""
    candidates = [prompt_edits(e) for e in examples]
    pairs = [(c.prompt, answer) for edits in candidates for c in edits for answer in c.answers]
    log_q = iter(sequence_log_probs(model, tokenizer, pairs, vocab_size=vocab_size))
    chosen = []
    for edits in candidates:
        scores = [_log_sum_exp([next(log_q) for _ in edit.answers]) for edit in edits]
        chosen.append(edits[scores.index(min(scores))])
    return chosen


def attack_success_rate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    clean_predictions: Sequence[str],
    *,
    max_new_tokens: int,
    vocab_size: int | None = None,
    answer_of: Callable[[str], str] = lambda output: output,
) -> float | None:
    """Share of the items answered correctly on the clean prompt that the strongest edit breaks;
    ``None`` when no item was answered correctly (there is nothing to attack, and 0 would read as
    "robust"). ``answer_of`` reads the answer in an output, as the clean predictions were read."""
    correct = [e for e, p in zip(examples, clean_predictions, strict=True) if is_correct(p, e)]
    if not correct:
        return None
    attacked = strongest_edits(model, tokenizer, correct, vocab_size=vocab_size)
    outputs = generate_responses(model, tokenizer, [e.prompt for e in attacked], max_new_tokens=max_new_tokens)
    return sum(not is_correct(answer_of(o), e) for o, e in zip(outputs, attacked, strict=True)) / len(correct)


def robustness_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    test: Sequence[Example],
    test_predictions: Sequence[str],
    *,
    ood_size: int,
    max_new_tokens: int,
    vocab_size: int | None = None,
) -> dict[str, float]:
    """``attack_success_rate`` on ``test`` (left out when nothing was answered correctly) and
    exact match / ROUGE-L on ``ood_size`` OOD items."""
    ood = make_split("ood", ood_size)
    predictions = generate_responses(model, tokenizer, [e.prompt for e in ood], max_new_tokens=max_new_tokens)
    rate = attack_success_rate(model, tokenizer, test, test_predictions, max_new_tokens=max_new_tokens, vocab_size=vocab_size)
    return {
        **({"attack_success_rate": rate} if rate is not None else {}),
        "ood_exact_match": exact_match(predictions, ood),
        "ood_rouge_l": mean_rouge_l(predictions, ood),
    }
