"""The request and result types of teacher access, shared by backends, the cache and the server.

A `GenerationRequest` (one prompt — text or chat messages — and how to sample) goes in, a
`Completion` (the text, why it stopped, token counts, optional top-k log-probs) comes out. Both
convert to and from plain JSON, which is how the response cache stores and keys them. Only the
standard library is used, so the cache does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn: ``role`` is ``"system"``, ``"user"`` or ``"assistant"``."""

    role: str
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt and how to sample from the teacher.

    Args:
        prompt: Plain text (sent to a completions endpoint) or chat messages, given as
            `ChatMessage` objects or ``{"role": ..., "content": ...}`` mappings (stored as a
            tuple of `ChatMessage`, so requests are hashable).
        max_new_tokens: Upper bound on generated tokens.
        temperature: Sampling temperature; ``0`` means greedy decoding.
        top_p: Nucleus sampling mass, in ``(0, 1]``.
        seed: Makes sampling reproducible where the backend supports it.
        n: Number of completions for this prompt.
        stop: Strings that end the completion (cut from the text).
        logprobs: If set, return the top-``logprobs`` log-probabilities of every generated token.

    Raises:
        ValueError: A parameter is out of range (the message names it and the allowed range).
    """

    prompt: str | tuple[ChatMessage, ...]
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: int | None = None

    def __post_init__(self) -> None:
        # Normalise in place (the dataclass is frozen): chat messages to a tuple of ChatMessage,
        # a single stop string to a 1-tuple.
        if not isinstance(self.prompt, str):
            object.__setattr__(self, "prompt", tuple(_as_message(m) for m in self.prompt))
            if not self.prompt:
                raise ValueError("prompt has no chat messages; pass a string or at least one message")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        problems = [
            f"{name} must be {rule}, got {value!r}"
            for name, value, ok, rule in [
                ("max_new_tokens", self.max_new_tokens, _is_int(self.max_new_tokens, 1), "an int >= 1"),
                ("temperature", self.temperature, self.temperature >= 0, ">= 0 (0 is greedy)"),
                ("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
                ("n", self.n, _is_int(self.n, 1), "an int >= 1"),
                ("seed", self.seed, self.seed is None or _is_int(self.seed, None), "None or an int"),
                (
                    "logprobs",
                    self.logprobs,
                    self.logprobs is None or _is_int(self.logprobs, 0),
                    "None or an int >= 0",
                ),
                ("stop", self.stop, all(isinstance(s, str) and s for s in self.stop), "non-empty strings"),
            ]
            if not ok
        ]
        if problems:
            raise ValueError("invalid GenerationRequest: " + "; ".join(problems))

    @property
    def is_chat(self) -> bool:
        """True when the prompt is a list of chat messages."""
        return not isinstance(self.prompt, str)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (messages as ``{"role", "content"}`` dicts); stable for cache keys."""
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationRequest:
        """Inverse of `to_dict`."""
        return cls(**dict(data))


def _is_int(value: object, minimum: int | None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def _as_message(message: ChatMessage | Mapping[str, Any]) -> ChatMessage:
    if isinstance(message, ChatMessage):
        return message
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        raise ValueError(
            f"a chat message must be a mapping with 'role' and 'content' strings, got {message!r}"
        )
    if not isinstance(message.get("content"), str):
        raise ValueError(f"chat message content must be a string, got {message.get('content')!r}")
    return ChatMessage(role=message["role"], content=message["content"])


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability and the top alternatives, most likely first."""

    token: str
    logprob: float
    top_logprobs: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Completion:
    """What the teacher wrote for one sample of one request (also what the cache stores).

    Attributes:
        text: The completion (stop strings and special tokens removed; may be empty).
        finish_reason: ``"stop"``, ``"length"``, whatever else the server reported, or ``None``
            when the backend did not say.
        prompt_tokens: Tokens in the prompt (``None`` if the backend did not say).
        completion_tokens: Generated tokens including the one that ended it (``None`` if unknown).
        logprobs: Per generated token, when requested and offered by the backend.
        index: Position of this sample among the request's ``n`` (not stored in caches).

    Raises:
        TypeError, ValueError: A field has the wrong type or a negative token count.
    """

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    index: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"text must be a string, got {type(self.text).__name__}")
        if self.finish_reason is not None and not isinstance(self.finish_reason, str):
            raise TypeError(f"finish_reason must be a string or None, got {self.finish_reason!r}")
        for name in ("prompt_tokens", "completion_tokens"):
            count = getattr(self, name)
            if count is not None and not _is_int(count, 0):
                raise ValueError(f"{name} must be an integer >= 0 or None, got {count!r}")
        if self.logprobs is not None:
            object.__setattr__(self, "logprobs", tuple(_as_token_logprob(t) for t in self.logprobs))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Completion:
        """Inverse of `to_dict`; unknown fields are ignored (newer writers), ``text`` is required."""
        if "text" not in data:
            raise ValueError("a completion needs a 'text' field")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    @classmethod
    def coerce(cls, value: object) -> Completion:
        """Accept what a backend returns: a `Completion`, a mapping, or an object with ``.text``.

        A missing text (``None``, as in an API's ``"content": null``) becomes ``""``; anything
        else that is not a string is an error.
        """
        if isinstance(value, Completion):
            return value
        if isinstance(value, Mapping):
            fields = dict(value)
        elif hasattr(value, "text"):
            fields = {name: getattr(value, name, None) for name in cls.__dataclass_fields__}
            fields["index"] = fields["index"] or 0
        else:
            raise TypeError(
                f"expected a Completion, a mapping or an object with a .text attribute, got {type(value).__name__}"
            )
        if fields.get("text") is None:
            fields["text"] = ""
        return cls.from_dict(fields)


def _as_token_logprob(value: TokenLogprob | Mapping[str, Any]) -> TokenLogprob:
    """A `TokenLogprob` from itself or its JSON form (tuples come back from JSON as lists)."""
    if isinstance(value, TokenLogprob):
        return value
    if not isinstance(value, Mapping) or "token" not in value or "logprob" not in value:
        raise TypeError(f"a token log-prob needs 'token' and 'logprob', got {value!r}")
    alternatives = tuple((str(t), float(lp)) for t, lp in value.get("top_logprobs") or ())
    return TokenLogprob(str(value["token"]), float(value["logprob"]), alternatives)
