"""Filters the instruction-generation pipelines share: ROUGE-L novelty and response sanity.

**ROUGE-L novelty** (Self-Instruct §2.3, kept by Alpaca, Lion and LaMini-LM): a new instruction
enters the pool only if its ROUGE-L F1 against *every* instruction already in the pool is at most
a threshold (0.7). Tokens are those of the ``rouge_score`` package the papers use: lowercased,
every run of non-alphanumeric characters a separator, so ``"rev up: abc ="`` has the tokens
``rev``, ``up``, ``abc``.

**Response sanity**: teacher text is untrusted input. `response_problem` names what is wrong with
a response (empty, cut off at the length limit, only punctuation) or returns ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from reference_impls.core.metrics import lcs_length
from reference_impls.losses.numerics import check_unit_interval
from reference_impls.teachers.text import Completion

NOVELTY_THRESHOLD = 0.7  # Self-Instruct: keep an instruction only if ROUGE-L <= 0.7 to the pool


def rouge_tokens(text: str) -> list[str]:
    """``rouge_score``'s default tokenization: lowercase, split on non-alphanumerics."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge_l_tokens(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 of two token lists (0 if either is empty)."""
    common = lcs_length(a, b) if a and b else 0
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


class NoveltyFilter:
    """The ROUGE-L pool of Self-Instruct: `admit` adds an instruction unless it is too similar.

    Args:
        pool: Instructions already in the pool (the seed tasks).
        threshold: Reject when the best ROUGE-L F1 against the pool is *above* this.
    """

    def __init__(self, pool: Iterable[str] = (), threshold: float = NOVELTY_THRESHOLD) -> None:
        check_unit_interval("threshold", threshold)
        self.threshold = threshold
        self._pool: list[list[str]] = []
        for text in pool:
            self._pool.append(rouge_tokens(text))

    def __len__(self) -> int:
        return len(self._pool)

    def max_similarity(self, text: str) -> float:
        """The highest ROUGE-L F1 of ``text`` against the pool (0 for an empty pool)."""
        tokens = rouge_tokens(text)
        return max((rouge_l_tokens(tokens, other) for other in self._pool), default=0.0)

    def admit(self, text: str) -> bool:
        """Add ``text`` to the pool and return True if it is novel enough, else return False."""
        if self.max_similarity(text) > self.threshold:
            return False
        self._pool.append(rouge_tokens(text))
        return True


def response_problem(completion: Completion) -> str | None:
    """Why a teacher response cannot be used as a training target, or ``None`` if it can.

    ``"empty"`` (nothing but whitespace), ``"truncated"`` (stopped at the length limit, so the
    end is missing), ``"no content"`` (no letter or digit: punctuation or filler only).
    """
    text = completion.text.strip()
    if not text:
        return "empty"
    if completion.finish_reason == "length":
        return "truncated"
    if not any(c.isalnum() for c in text):
        return "no content"
    return None


def count(stats: dict[str, int], key: str, by: int = 1) -> None:
    """Increase a pipeline counter (``stats[key] += by``)."""
    stats[key] = stats.get(key, 0) + by
