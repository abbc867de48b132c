"""The answer side of the teacher server: generated choices as OpenAI response bodies.

Pure functions from `Choice` rows (one row of ``n`` choices per prompt) to the JSON the two
endpoints return, so the response format is readable apart from the HTTP handling in
`reference_impls.teachers.server.app`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reference_impls.teachers.messages import Completion


@dataclass(frozen=True)
class Choice:
    """One generated continuation, as the API reports it.

    Attributes:
        text: The completion text (special tokens removed, cut before a stop string).
        finish_reason: ``"stop"`` (EOS or a stop string) or ``"length"`` (``max_tokens`` reached).
        completion_tokens: Tokens generated, the one that ended the completion (EOS) included.
        logprobs: Per token ``(token text, its log-prob, [(alternative text, log-prob), ...])``;
            empty unless requested.
    """

    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: list[tuple[str, float, list[tuple[str, float]]]]

    @classmethod
    def from_completion(cls, completion: Completion) -> Choice:
        logprobs = [(step.token, step.logprob, list(step.top_logprobs)) for step in completion.logprobs or ()]
        return cls(completion.text, completion.finish_reason, completion.completion_tokens or 0, logprobs)


def completion_logprobs(choice: Choice) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object (offsets are into the completion text)."""
    offsets, position = [], 0
    for token, _, _ in choice.logprobs:
        offsets.append(position)
        position += len(token)
    return {
        "tokens": [token for token, _, _ in choice.logprobs],
        "token_logprobs": [logprob for _, logprob, _ in choice.logprobs],
        "top_logprobs": [dict(alternatives) for _, _, alternatives in choice.logprobs],
        "text_offset": offsets,
    }


def chat_logprobs(choice: Choice) -> dict[str, Any]:
    """The chat ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**entry(token, logprob), "top_logprobs": [entry(t, lp) for t, lp in alternatives]}
            for token, logprob, alternatives in choice.logprobs
        ]
    }


def usage(prompt_tokens: int, choices: Sequence[Sequence[Choice]]) -> dict[str, int]:
    """The ``usage`` object: prompt tokens once per prompt, completion tokens summed over all choices."""
    completion = sum(c.completion_tokens for row in choices for c in row)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def completion_response(
    rows: list[list[Choice]], prompt_tokens: int, *, model_name: str, with_logprobs: bool
) -> dict[str, Any]:
    """The ``/v1/completions`` body: every prompt's choices in one flat list, prompt by prompt."""
    choices = [
        {
            "index": i,
            "text": choice.text,
            "finish_reason": choice.finish_reason,
            "logprobs": completion_logprobs(choice) if with_logprobs else None,
        }
        for i, choice in enumerate(c for row in rows for c in row)
    ]
    return _envelope("cmpl", "text_completion", choices, prompt_tokens, rows, model_name)


def chat_response(
    rows: list[list[Choice]], prompt_tokens: int, *, model_name: str, with_logprobs: bool
) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body for the one conversation of ``rows``."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": choice.text},
            "finish_reason": choice.finish_reason,
            "logprobs": chat_logprobs(choice) if with_logprobs else None,
        }
        for i, choice in enumerate(rows[0])
    ]
    return _envelope("chatcmpl", "chat.completion", choices, prompt_tokens, rows, model_name)


def _envelope(
    prefix: str,
    kind: str,
    choices: list[dict[str, Any]],
    prompt_tokens: int,
    rows: list[list[Choice]],
    model_name: str,
) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": usage(prompt_tokens, rows),
    }
