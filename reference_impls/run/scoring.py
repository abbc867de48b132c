"""How a run on the string suite (or on JSONL data) scores a model: the metric names and `evaluate`.

Exact match and ROUGE-L of greedy answers; teacher-forced distances to the teacher on the
reference responses; on the embedded suite also the golden metric (the KL from the suite's
oracle) and the robustness metrics; on JSONL data word-level ROUGE-L, the metric of the MiniLLM
protocol (see the evaluation guide).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.generation import generate_responses
from reference_impls.core.metrics import exact_match, mean_rouge_l, oracle_kl, token_distances_to_teacher
from reference_impls.core.robustness import robustness_metrics
from reference_impls.tasks.strings import Example

METRIC_NAMES = (
    "exact_match",
    "token_kl_to_teacher",
    "token_reverse_kl_to_teacher",
    "token_tvd_to_teacher",
    "rouge_l",
    "oracle_kl",
    "attack_success_rate",
    "ood_exact_match",
    "ood_rouge_l",
    "rouge_l_words",
)
# The metrics that need the suite's own generators (its oracle, its edits, its OOD split): not
# reported on JSONL data.
SUITE_METRICS = ("oracle_kl", "attack_success_rate", "ood_exact_match", "ood_rouge_l")
# Reported on JSONL data only: word-level ROUGE-L, as the MiniLLM protocol scores free text (the
# suite's answers are character strings, scored by character ROUGE-L).
TEXT_METRICS = ("rouge_l_words",)
# What each extra held-out set (``RunConfig.eval_data``) reports, as ``"<metric> (<set name>)"``.
HELD_OUT_SET_METRICS = ("exact_match", "rouge_l_words")
# Metric name → the teacher-forced distance it reports (see metrics.token_divergence_to_teacher).
DISTANCE_METRICS = {
    "token_kl_to_teacher": "forward-kl",
    "token_reverse_kl_to_teacher": "reverse-kl",
    "token_tvd_to_teacher": "total-variation",
}


def reported_metrics(suite: bool) -> tuple[str, ...]:
    """The metrics a run reports: on the embedded suite all but `TEXT_METRICS`, on JSONL data
    all but `SUITE_METRICS` (plus, there, those of each held-out set)."""
    left_out = TEXT_METRICS if suite else SUITE_METRICS
    return tuple(name for name in METRIC_NAMES if name not in left_out)


def evaluate(
    model: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    vocab_size: int | None = None,
    distances_to_teacher: bool = True,
    suite: bool = True,
) -> dict[str, float]:
    """Greedy-decode ``examples`` and score them; distances to ``teacher`` on the reference
    responses (left out with ``distances_to_teacher=False``: across vocabularies they are undefined).

    With ``suite`` (examples of the embedded suite) also the golden metric, the KL from the
    data's oracle, and the robustness metrics (attack success rate, OOD exact match and ROUGE-L,
    on as many OOD items as ``examples``); JSONL data has no oracle, edits or OOD split, and
    reports word-level ROUGE-L instead (`reference_impls.core.metrics.rouge_l`, ``unit="word"``).
    """
    predictions = generate_responses(
        model, tokenizer, [e.prompt for e in examples], max_new_tokens=max_new_tokens
    )
    distances = dict.fromkeys(DISTANCE_METRICS, 0.0)  # the teacher's own row
    if not distances_to_teacher:
        distances = {}
    elif model is not teacher:
        measured = token_distances_to_teacher(
            model,
            teacher,
            tokenizer,
            examples,
            vocab_size=vocab_size,
            measures=tuple(DISTANCE_METRICS.values()),
        )
        distances = {name: measured[measure] for name, measure in DISTANCE_METRICS.items()}
    metrics = {
        "exact_match": exact_match(predictions, examples),
        **distances,
        "rouge_l": mean_rouge_l(predictions, examples),
    }
    if not suite:
        metrics["rouge_l_words"] = mean_rouge_l(predictions, examples, unit="word")
    else:
        metrics["oracle_kl"] = oracle_kl(model, tokenizer, examples, vocab_size=vocab_size)
        metrics |= robustness_metrics(
            model,
            tokenizer,
            examples,
            predictions,
            ood_size=len(examples),
            max_new_tokens=max_new_tokens,
            vocab_size=vocab_size,
        )
    return metrics
