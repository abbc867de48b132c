"""Evaluation metrics: exact match, ROUGE-L F1, the token-level KL to the teacher, the KL to the oracle.

* Exact match asks whether the generated answer is *one of* the valid answers.
* ROUGE-L F1 gives partial credit from the longest common subsequence (LCS) with the closest
  valid answer; by default over characters, since the suite's answers are single words.
* The token-level KL measures how far the student's next-token distributions are from the
  teacher's on the same reference sequences (teacher forcing), i.e. what logit distillation
  directly optimises, independent of decoding. It is the *proxy* metric: closeness to a
  teacher that is itself imperfect.
* The KL to the oracle is the *golden* metric (teacher hacking, arXiv 2502.02671): how far the
  student's answer distribution is from the distribution the data was generated from, exactly
  computable on the embedded suites (`tasks.strings.oracle_distribution`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.tokenizer import encode_pair, pad_id
from reference_impls.core.training import collate, next_token_view
from reference_impls.tasks.strings import Example, oracle_distribution


def exact_match(predictions: Sequence[str], examples: Sequence[Example]) -> float:
    """Share of predictions that equal (after stripping whitespace) one of the example's answers."""
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if not examples:
        return 0.0
    return sum(p.strip() in e.answers for p, e in zip(predictions, examples, strict=True)) / len(examples)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two sequences (O(len(a)·len(b)) DP)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _rouge_words(text: str) -> list[str]:
    return _NOT_ALPHANUMERIC.sub(" ", text.lower()).split()


_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_l(prediction: str, reference: str, *, unit: str = "char") -> float:
    r"""ROUGE-L F1 between two texts.

    $P = \mathrm{LCS}/|pred|$, $R = \mathrm{LCS}/|ref|$, $F_1 = 2PR/(P+R)$, over characters
    (``unit="char"``) or words (``unit="word"``). Words follow the default tokenizer of Google's
    ``rouge_score``, which the MiniLLM/S-NI evaluation scripts call: lower-cased, every run of
    characters other than ``a-z0-9`` a separator. Those scripts also Porter-stem the words
    (``use_stemmer=True``); this function does not, so on free text it can score slightly lower
    than they do (stemming only adds matches). Two empty texts score 1.
    """
    if unit not in ("char", "word"):
        raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
    if unit == "char":
        pred, ref = list(prediction.strip()), list(reference.strip())
    else:
        pred, ref = _rouge_words(prediction), _rouge_words(reference)
    if not pred and not ref:
        return 1.0
    common = lcs_length(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(predictions: Sequence[str], examples: Sequence[Example], *, unit: str = "char") -> float:
    """Mean over examples of the best ROUGE-L F1 against any valid answer."""
    if not examples:
        return 0.0
    scores = [
        max(rouge_l(p, answer, unit=unit) for answer in e.answers)
        for p, e in zip(predictions, examples, strict=True)
    ]
    return sum(scores) / len(scores)


MEASURES = ("forward-kl", "reverse-kl", "total-variation")


def _per_token(measure: str, log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-vocabulary-entry terms of one distance between teacher ``log_p`` and student ``log_q``."""
    if measure == "total-variation":
        return 0.5 * (log_p.exp() - log_q.exp()).abs()
    if measure == "reverse-kl":
        log_p, log_q = log_q, log_p
    # xlogy-style: positions where p == 0 contribute exactly 0 even if log q is -inf.
    return torch.where(log_p.exp() > 0, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p))


@torch.no_grad()
def token_distances_to_teacher(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 256,
    vocab_size: int | None = None,
    measures: Sequence[str] = MEASURES,
) -> dict[str, float]:
    r"""Mean over reference-response tokens of teacher–student distances, all from one pass.

    ``measures`` picks the per-token distances: ``"forward-kl"``
    ($\mathrm{KL}(p_{teacher} \,\|\, q_{student})$), ``"reverse-kl"`` ($\mathrm{KL}(q \,\|\, p)$)
    and ``"total-variation"`` ($\tfrac12\sum_v |p - q|$). Forward KL rewards a student that
    covers all of the teacher's mass, reverse KL one that stays inside the teacher's modes, TVD
    treats both errors alike; each objective family should be judged by the distance it
    optimises as well.

    Both models are teacher-forced once on the same ``[bos] prompt response [eos]`` sequences;
    each distance is taken at every position that predicts a response token (EOS included) and
    averaged over all such positions of all examples, e.g. for forward KL
    $\frac{1}{N}\sum_t \sum_v p_t(v) (\log p_t(v) - \log q_t(v))$, in float32.

    Args:
        student: Student model; its vocabulary must be the teacher's.
        teacher: Teacher model.
        tokenizer: The shared tokenizer.
        examples: Sequences to score (their reference ``response``).
        batch_size: Sequences per forward pass.
        vocab_size: Cut logits to the first ``vocab_size`` entries (differently padded heads).
        measures: Any of ``MEASURES``.

    Returns:
        ``{measure: mean distance}``.
    """
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measure {unknown[0]!r}; use one of {', '.join(MEASURES)}")
    device = next(student.parameters()).device
    totals, count = dict.fromkeys(measures, 0.0), 0
    pad = pad_id(tokenizer)
    for start in range(0, len(examples), batch_size):
        rows = [encode_pair(tokenizer, e.prompt, e.response) for e in examples[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in collate(rows, pad).items()}
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        student_logits, labels = next_token_view(student(**inputs).logits[..., :vocab_size], batch["labels"])
        teacher_logits, _ = next_token_view(teacher(**inputs).logits[..., :vocab_size], batch["labels"])
        if student_logits.shape[-1] != teacher_logits.shape[-1]:
            raise ValueError(
                f"student vocabulary ({student_logits.shape[-1]}) differs from the teacher's "
                f"({teacher_logits.shape[-1]}): the token-level KL needs a shared vocabulary"
            )
        mask = labels != -100
        log_p = torch.log_softmax(teacher_logits[mask].float(), dim=-1)
        log_q = torch.log_softmax(student_logits[mask].float(), dim=-1)
        for measure in measures:
            totals[measure] += _per_token(measure, log_p, log_q).sum().item()
        count += int(mask.sum())
    return {measure: total / max(count, 1) for measure, total in totals.items()}


def token_divergence_to_teacher(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 256,
    vocab_size: int | None = None,
    measure: str = "forward-kl",
) -> float:
    """One distance of `token_distances_to_teacher` (default: forward KL)."""
    return token_distances_to_teacher(
        student,
        teacher,
        tokenizer,
        examples,
        batch_size=batch_size,
        vocab_size=vocab_size,
        measures=(measure,),
    )[measure]


@torch.no_grad()
def sequence_log_probs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 256,
    vocab_size: int | None = None,
    with_eos: bool = True,
    per_token: bool = False,
) -> list[float]:
    """``log q(response ⊕ EOS | prompt)`` of each ``(prompt, response)`` pair, teacher-forced.

    ``with_eos=False`` scores the response text alone; ``per_token`` divides by the number of
    scored tokens (the mean token log-likelihood, ``-log PPL``). Rows are right-padded, which
    causal attention keeps invisible to the real tokens: each value equals its own
    single-sequence pass.
    """
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    values: list[float] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(pairs), batch_size):
        rows = [encode_pair(tokenizer, prompt, response) for prompt, response in pairs[start : start + batch_size]]
        if not with_eos:
            rows = [(ids[:-1], labels[:-1]) for ids, labels in rows]
        batch = {k: v.to(device) for k, v in collate(rows, pad).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, labels = next_token_view(logits[..., :vocab_size], batch["labels"])
        log_q = torch.log_softmax(logits.float(), dim=-1)
        mask = labels != -100
        picked = (log_q.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask).sum(-1)
        if per_token:
            picked = picked / mask.sum(-1).clamp(min=1)
        values.extend(picked.tolist())
    model.train(was_training)
    return values


def oracle_kl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 256,
    vocab_size: int | None = None,
) -> float:
    r"""Mean over examples of the sequence-level $\mathrm{KL}(o \,\|\, q)$ from the oracle $o$ to the model $q$.

    $\mathrm{KL} = \sum_a o(a) \,[\log o(a) - \log q(a \oplus \mathrm{EOS} \mid x)]$ over the
    oracle's answers $a$ (`oracle_distribution`), in nats per example: exact, no sampling. 0 for a
    model that puts all its mass on the valid answers in the oracle's proportions; a model that
    spends mass on wrong answers, or on one valid answer only where several are equally likely,
    is penalised.

    Raises:
        ValueError: From `oracle_distribution` for examples without a known oracle.
    """
    oracles = [oracle_distribution(e) for e in examples]
    pairs = [(e.prompt, answer) for e, oracle in zip(examples, oracles, strict=True) for answer in oracle]
    log_q = iter(sequence_log_probs(model, tokenizer, pairs, batch_size=batch_size, vocab_size=vocab_size))
    total = 0.0
    for oracle in oracles:
        total += sum(p * (math.log(p) - next(log_q)) for p in oracle.values())
    return total / max(len(examples), 1)
