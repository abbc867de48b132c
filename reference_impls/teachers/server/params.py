"""The request side of the teacher server: its configuration and the OpenAI request fields, validated.

Everything here is a pure function of a parsed JSON body (no sockets, no model), so the wire
format's rules can be read and tested on their own; `reference_impls.teachers.server.app` calls
them from the HTTP handler. A malformed field raises `ApiError`, which the handler answers as the
OpenAI error object ``{"error": {"message", "type", "code", "param"}}``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from reference_impls.teachers.messages import ChatMessage
from reference_impls.teachers.text import plain_chat_prompt

EMBEDDED_NAME = "kdatlas-embedded-teacher"
MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 4
CHAT_ROLES = ("system", "developer", "user", "assistant")


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ServerConfig:
    """What a server serves and how.

    Attributes:
        model_name: The id clients must send as ``model`` (and that ``/v1/models`` lists).
        max_new_tokens: Default and upper bound of a request's ``max_tokens``.
        api_key: Bearer token clients must send; ``None`` serves without authentication. Kept
            out of ``repr`` so that it never reaches a log or a traceback.
    """

    model_name: str = EMBEDDED_NAME
    max_new_tokens: int = 64
    api_key: str | None = field(default=None, repr=False)


def check_bind_host(host: str, allow_remote: bool = False) -> None:
    """Refuse a non-loopback bind address unless ``allow_remote``.

    The server has no TLS and, by default, no authentication: reachable from other machines it
    would hand a model to anyone on the network.

    Raises:
        ValueError: ``host`` is not ``localhost`` or a loopback address and ``allow_remote`` is off.
    """
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a host name other than localhost may resolve to anything
    if not loopback:
        raise ValueError(
            f"refusing to serve on {host!r}: it is reachable from other machines. Use 127.0.0.1 "
            "(the default), or pass --allow-remote (and set --api-key-env) if you really mean it."
        )


def read_api_key(env_var: str) -> str:
    """The API key stored in environment variable ``env_var``.

    Raises:
        ValueError: The variable is unset or empty (the message names the variable, never a value).
    """
    key = os.environ.get(env_var, "")
    if not key.strip():
        raise ValueError(f"environment variable {env_var} is unset or empty: export the API key there first")
    return key.strip()


# ----------------------------------------------------------------------------- request parsing


class ApiError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def payload(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}}


def bad_request(message: str, code: str, param: str | None = None) -> ApiError:
    """A 400 ``ApiError`` naming the offending field ``param``."""
    return ApiError(HTTPStatus.BAD_REQUEST, message, code, param=param)


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    # bool is an int subclass in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"'{name}' must be a number, got {type(value).__name__}", "invalid_type", name)
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low} and {high}, got {value}", "invalid_value", name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer, got {type(value).__name__}", "invalid_type", name)
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low} and {high}, got {value}", "invalid_value", name)
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request("'stop' must be a non-empty string or a list of them", "invalid_type", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(
            f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "invalid_value", "stop"
        )
    return tuple(stops)


@dataclass(frozen=True)
class SamplingParams:
    """The decoding fields of a request, validated.

    Attributes:
        max_tokens: Most tokens generated per choice.
        temperature: 0 is greedy; above 0, sampling at this temperature.
        top_p: Nucleus sampling mass (ignored when greedy).
        n: Choices per prompt.
        stop: Strings that end a choice's text.
        seed: Seed of the request's sampling; ``None`` draws a fresh one.
        top_logprobs: Alternatives reported per token; ``None`` reports no log-probs at all.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int | None = None


def parse_sampling(body: Mapping[str, Any], config: ServerConfig, *, chat: bool) -> SamplingParams:
    """Validate the sampling fields shared by both endpoints (unknown fields are ignored).

    Raises:
        ApiError: 400 naming the offending field.
    """
    if body.get("stream"):
        raise bad_request(
            "streaming is not supported by this server: send 'stream': false", "unsupported", "stream"
        )
    if chat:
        wants = body.get("logprobs")
        if wants is not None and not isinstance(wants, bool):
            raise bad_request("'logprobs' must be a boolean for chat completions", "invalid_type", "logprobs")
        top = _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
        top_logprobs = top if wants else None
    else:
        top_logprobs = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    limit = config.max_new_tokens
    # Newer chat clients send max_completion_tokens instead of the deprecated max_tokens.
    tokens_field = "max_completion_tokens" if chat and "max_tokens" not in body else "max_tokens"
    max_tokens = _integer(body, tokens_field, limit, 1, limit)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise bad_request(
            "'top_p' must be above 0 (use temperature 0 for greedy decoding)", "invalid_value", "top_p"
        )
    return SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else limit,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p,
        n=_integer(body, "n", 1, 1, MAX_CHOICES) or 1,
        stop=_stop(body),
        seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
        top_logprobs=top_logprobs,
    )


def check_model(body: Mapping[str, Any], config: ServerConfig) -> None:
    """Require ``model`` to name the served model.

    Raises:
        ApiError: 400 when missing, not a string, or another model.
    """
    if "model" not in body:
        raise bad_request("missing required field 'model'", "missing_field", "model")
    if not isinstance(body["model"], str):
        raise bad_request("'model' must be a string", "invalid_type", "model")
    if body["model"] != config.model_name:
        raise bad_request(
            f"unknown model {body['model']!r}: this server serves {config.model_name!r} (see GET /v1/models)",
            "model_not_found",
            "model",
        )


def parse_prompts(body: Mapping[str, Any]) -> list[str]:
    """The completion prompt(s): a string or a non-empty list of strings.

    Raises:
        ApiError: 400 when missing or of another type (token-id prompts are not supported).
    """
    if "prompt" not in body:
        raise bad_request("missing required field 'prompt'", "missing_field", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise bad_request("'prompt' must be a string or a non-empty list of strings", "invalid_type", "prompt")


def _message_text(message: Any, index: int) -> str:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"{param} must be an object with 'role' and 'content'", "invalid_type", param)
    if message.get("role") not in CHAT_ROLES:
        raise bad_request(
            f"{param}.role must be one of {', '.join(CHAT_ROLES)}", "invalid_value", f"{param}.role"
        )
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message["role"] == "assistant":
        return ""
    text_parts = isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    )
    if text_parts:
        return "".join(p["text"] for p in content)
    raise bad_request(
        f"{param}.content must be a string or a list of text parts", "invalid_type", f"{param}.content"
    )


def parse_messages(messages: Any) -> tuple[ChatMessage, ...]:
    """Validate ``messages`` and return them as `ChatMessage` objects (text parts joined).

    Raises:
        ApiError: 400 when ``messages`` is not a non-empty list of well-formed messages ending
            with a user message.
    """
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of messages", "invalid_type", "messages")
    texts = [_message_text(message, i) for i, message in enumerate(messages)]
    if messages[-1]["role"] != "user":
        raise bad_request("the last message must have role 'user'", "invalid_value", "messages")
    return tuple(ChatMessage(m["role"], text) for m, text in zip(messages, texts, strict=True))


def render_chat_prompt(messages: Any) -> str:
    """The plain prompt a model without a chat template sees for ``messages`` (validated first):
    the instruction suite's conversation format, `reference_impls.teachers.text.plain_chat_prompt`.

    ``[{"role": "user", "content": "rev: abc ="}]`` renders as ``"rev: abc ="``, the plain prompt
    the embedded teacher knows; a system prompt comes first, earlier turns (instruction + reply)
    one per line.
    """
    return plain_chat_prompt([{"role": m.role, "content": m.content} for m in parse_messages(messages)])
