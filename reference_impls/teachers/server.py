"""A local causal LM behind an OpenAI-compatible HTTP endpoint (``kdatlas serve-teacher``).

Black-box distillation talks to its teacher only through text over HTTP. Serving the embedded
teacher (or any local model) with the same wire format as OpenAI, vLLM, TGI or llama.cpp lets
the whole black-box pipeline run, and be tested, over real HTTP on 127.0.0.1.

Endpoints (the standard library's ``ThreadingHTTPServer``, no extra dependency):

* ``GET /v1/models`` and ``GET /v1/models/{name}``: the one served model.
* ``POST /v1/completions``: ``prompt`` (a string or a list of strings), ``max_tokens``,
  ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``logprobs`` (top-k alternatives, 0-20).
* ``POST /v1/chat/completions``: ``messages`` plus the same sampling fields; ``logprobs`` is a
  boolean and ``top_logprobs`` the number of alternatives.

**Chat template.** A model with a chat template gets it. The embedded teachers have none and are
trained on plain prompts, so messages are rendered in the instruction suite's conversation
format (`reference_impls.teachers.text.plain_chat_prompt`): system messages first, then each
user turn followed directly by the assistant's reply, one turn per line; the last message must
be the user's. A conversation of a single user message is exactly that message.

**Generation** is `reference_impls.teachers.text.LocalTeacher`'s, so a request gives the same
text over HTTP as the same request made locally. Temperature 0 is greedy decoding; otherwise
sampling at that temperature with nucleus ``top_p``, choice ``k`` seeded ``seed + k`` (a fresh
random seed when the request has none), so a seeded request is reproducible. ``stop`` strings cut
the text (``finish_reason`` ``"stop"``). ``usage.completion_tokens`` counts the token that ended a
choice (EOS) too, as vLLM does. Log-probs are those of the model's raw distribution (temperature
1, no top-p), as vLLM reports them by default. Requests are served concurrently but the model
runs one call at a time behind the teacher's lock; the prompts of one request are batched.

**Limits and errors.** ``max_tokens`` defaults to, and may not exceed, the server's
``max_new_tokens``; prompt plus completion must fit the model's context. Malformed requests get
OpenAI-style JSON errors ``{"error": {"message", "type", "code", "param"}}``: 400 (bad JSON,
missing or mistyped fields, unknown model), 401 (wrong bearer token when a key is set), 404
(unknown path), 405 (wrong method), 413 (body over 1 MiB). The key is never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.teachers.messages import ChatMessage, Completion, GenerationRequest
from reference_impls.teachers.text import LocalTeacher, plain_chat_prompt

logger = logging.getLogger(__name__)

EMBEDDED_NAME = "kdatlas-embedded-teacher"
MAX_BODY_BYTES = 1 << 20
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


def load_served_model(
    spec: str = "embedded", device: str = "auto", trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load the model to serve: ``"embedded"`` (the cached instruction teacher, what black-box
    pipelines use), ``"embedded-whitebox"`` (the white-box methods' teacher) or a local path / hub id.

    Returns:
        ``(model, tokenizer, default model name)``, the model in eval mode on ``device``.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "embedded":
        from reference_impls.teachers.instruct import load_or_train_instruct_teacher

        model, tokenizer = load_or_train_instruct_teacher(device)
        return model, tokenizer, EMBEDDED_NAME
    if spec == "embedded-whitebox":
        from reference_impls.teachers.embedded import load_or_train_teacher

        model, tokenizer = load_or_train_teacher(device)
        return model, tokenizer, f"{EMBEDDED_NAME}-whitebox"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(spec, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer, spec.rstrip("/")


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


def _bad(message: str, code: str, param: str | None = None) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, message, code, param=param)


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    # bool is an int subclass in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"'{name}' must be a number, got {type(value).__name__}", "invalid_type", name)
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low} and {high}, got {value}", "invalid_value", name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, got {type(value).__name__}", "invalid_type", name)
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low} and {high}, got {value}", "invalid_value", name)
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("'stop' must be a non-empty string or a list of them", "invalid_type", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise _bad(
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
        raise _bad("streaming is not supported by this server: send 'stream': false", "unsupported", "stream")
    if chat:
        wants = body.get("logprobs")
        if wants is not None and not isinstance(wants, bool):
            raise _bad("'logprobs' must be a boolean for chat completions", "invalid_type", "logprobs")
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
        raise _bad(
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
        raise _bad("missing required field 'model'", "missing_field", "model")
    if not isinstance(body["model"], str):
        raise _bad("'model' must be a string", "invalid_type", "model")
    if body["model"] != config.model_name:
        raise _bad(
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
        raise _bad("missing required field 'prompt'", "missing_field", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise _bad("'prompt' must be a string or a non-empty list of strings", "invalid_type", "prompt")


def _message_text(message: Any, index: int) -> str:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _bad(f"{param} must be an object with 'role' and 'content'", "invalid_type", param)
    if message.get("role") not in CHAT_ROLES:
        raise _bad(f"{param}.role must be one of {', '.join(CHAT_ROLES)}", "invalid_value", f"{param}.role")
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
    raise _bad(
        f"{param}.content must be a string or a list of text parts", "invalid_type", f"{param}.content"
    )


def parse_messages(messages: Any) -> tuple[ChatMessage, ...]:
    """Validate ``messages`` and return them as `ChatMessage` objects (text parts joined).

    Raises:
        ApiError: 400 when ``messages`` is not a non-empty list of well-formed messages ending
            with a user message.
    """
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of messages", "invalid_type", "messages")
    texts = [_message_text(message, i) for i, message in enumerate(messages)]
    if messages[-1]["role"] != "user":
        raise _bad("the last message must have role 'user'", "invalid_value", "messages")
    return tuple(ChatMessage(m["role"], text) for m, text in zip(messages, texts, strict=True))


def render_chat_prompt(messages: Any) -> str:
    """The plain prompt a model without a chat template sees for ``messages`` (validated first):
    the instruction suite's conversation format, `reference_impls.teachers.text.plain_chat_prompt`.

    ``[{"role": "user", "content": "rev: abc ="}]`` renders as ``"rev: abc ="``, the plain prompt
    the embedded teacher knows; a system prompt comes first, earlier turns (instruction + reply)
    one per line.
    """
    return plain_chat_prompt([{"role": m.role, "content": m.content} for m in parse_messages(messages)])


# ----------------------------------------------------------------------------- generation


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


def _completion_logprobs(choice: Choice) -> dict[str, Any]:
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


def _chat_logprobs(choice: Choice) -> dict[str, Any]:
    """The chat ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**entry(token, logprob), "top_logprobs": [entry(t, lp) for t, lp in alternatives]}
            for token, logprob, alternatives in choice.logprobs
        ]
    }


# ----------------------------------------------------------------------------- the server


class TeacherServer(ThreadingHTTPServer):
    """A threading HTTP server that owns the model, its tokenizer and the lock that serialises them."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: ServerConfig,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        # Generation is the LocalTeacher's: the same request gives the same text locally and over
        # HTTP (greedy and seeded sampling alike). It serialises calls behind its own lock.
        self.teacher = LocalTeacher(model, tokenizer, label=config.model_name)
        self.created = int(time.time())

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, the base URL OpenAI clients expect."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/v1"

    def complete(
        self, prompts: Sequence[str | tuple[ChatMessage, ...]], params: SamplingParams
    ) -> tuple[list[list[Choice]], int]:
        """``n`` choices per prompt (text or chat messages) and the prompt token count.

        Raises:
            ApiError: 400 when a prompt plus ``max_tokens`` exceeds the model's context.
        """
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**62)
        requests = [
            GenerationRequest(
                prompt,
                max_new_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p if params.temperature > 0 else 1.0,
                seed=seed,
                n=params.n,
                stop=params.stop,
                logprobs=params.top_logprobs,
            )
            for prompt in prompts
        ]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        prompt_tokens = 0
        for index, request in enumerate(requests):
            length = len(self.teacher.prompt_ids(request))
            prompt_tokens += length
            if limit is not None and length + params.max_tokens > limit:
                raise _bad(
                    f"prompt {index} has {length} tokens; with max_tokens={params.max_tokens} it exceeds the "
                    f"model's context of {limit} tokens: shorten the prompt or lower max_tokens",
                    "context_length_exceeded",
                    "prompt",
                )
        completions = iter(self.teacher.generate(requests))
        choices = [[Choice.from_completion(next(completions)) for _ in range(params.n)] for _ in requests]
        return choices, prompt_tokens


def _usage(prompt_tokens: int, choices: Sequence[Sequence[Choice]]) -> dict[str, int]:
    completion = sum(c.completion_tokens for row in choices for c in row)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


class _Handler(BaseHTTPRequestHandler):
    """Routes requests, checks the key, turns every failure into an OpenAI-style JSON error."""

    server: TeacherServer
    protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections

    # -- plumbing

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Method and path only: no headers (the key) and no query string.
        logger.info("%s %s -> %s", self.command, self.path.split("?")[0], code)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(format, *args)

    def _send(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            # The request body may be unread: the connection cannot be reused safely.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _authorize(self) -> None:
        expected = self.server.config.api_key
        if expected is None:
            return
        header = self.headers.get("Authorization", "")
        token = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise ApiError(
                HTTPStatus.UNAUTHORIZED,
                "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                "invalid_api_key",
            )

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise _bad("missing Content-Length: send a JSON body", "invalid_request") from None
        if length > MAX_BODY_BYTES:
            raise ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes", "too_large"
            )
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _bad(f"the body is not valid JSON: {error}", "invalid_json") from None
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object", "invalid_json")
        return body

    def _handle(self, routes: Mapping[str, Callable[[], dict[str, Any]]]) -> None:
        path = self.path.split("?")[0].rstrip("/")
        try:
            self._authorize()
            if path.startswith("/v1/models/") and self.command == "GET":
                self._send(HTTPStatus.OK, self._model(path.removeprefix("/v1/models/")))
                return
            if path not in routes:
                if path in _ALL_ROUTES:
                    message = f"{self.command} is not allowed on {path}"
                    raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, message, "method_not_allowed")
                raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}", "not_found")
            self._send(HTTPStatus.OK, routes[path]())
        except ApiError as error:
            self._send(error.status, error.payload())
        except Exception:
            logger.exception("request to %s failed", path)
            server_error = ApiError(
                HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", "server_error", kind="server_error"
            )
            self._send(server_error.status, server_error.payload())

    def do_GET(self) -> None:
        self._handle({"/v1/models": self._models})

    def do_POST(self) -> None:
        self._handle({"/v1/completions": self._completions, "/v1/chat/completions": self._chat})

    # -- endpoints

    def _model(self, name: str) -> dict[str, Any]:
        if name != self.server.config.model_name:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such model: {name}", "model_not_found")
        return {"id": name, "object": "model", "created": self.server.created, "owned_by": "kdatlas"}

    def _models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model(self.server.config.model_name)]}

    def _completions(self) -> dict[str, Any]:
        body = self._body()
        check_model(body, self.server.config)
        prompts = parse_prompts(body)
        params = parse_sampling(body, self.server.config, chat=False)
        rows, prompt_tokens = self.server.complete(prompts, params)
        choices = [
            {
                "index": i,
                "text": choice.text,
                "finish_reason": choice.finish_reason,
                "logprobs": _completion_logprobs(choice) if params.top_logprobs is not None else None,
            }
            for i, choice in enumerate(c for row in rows for c in row)
        ]
        return self._envelope("cmpl", "text_completion", choices, prompt_tokens, rows)

    def _chat(self) -> dict[str, Any]:
        body = self._body()
        check_model(body, self.server.config)
        if "messages" not in body:
            raise _bad("missing required field 'messages'", "missing_field", "messages")
        messages = parse_messages(body["messages"])
        params = parse_sampling(body, self.server.config, chat=True)
        rows, prompt_tokens = self.server.complete([messages], params)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": choice.text},
                "finish_reason": choice.finish_reason,
                "logprobs": _chat_logprobs(choice) if params.top_logprobs is not None else None,
            }
            for i, choice in enumerate(rows[0])
        ]
        return self._envelope("chatcmpl", "chat.completion", choices, prompt_tokens, rows)

    def _envelope(
        self,
        prefix: str,
        kind: str,
        choices: list[dict[str, Any]],
        prompt_tokens: int,
        rows: list[list[Choice]],
    ) -> dict[str, Any]:
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.server.config.model_name,
            "choices": choices,
            "usage": _usage(prompt_tokens, rows),
        }


_ALL_ROUTES = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions"})


def make_server(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    config: ServerConfig = ServerConfig(),
    allow_remote: bool = False,
) -> TeacherServer:
    """Bind a server (not yet serving); port 0 picks a free port.

    Raises:
        ValueError: ``host`` is not loopback and ``allow_remote`` is off.
        OSError: The address cannot be bound (e.g. the port is in use).
    """
    check_bind_host(host, allow_remote)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token: generation could never stop — set one first")
    return TeacherServer((host, port), model, tokenizer, config)


def serve_in_thread(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str = EMBEDDED_NAME,
    max_new_tokens: int = 64,
    api_key: str | None = None,
) -> tuple[str, Callable[[], None]]:
    """Serve ``model`` from a background thread (for tests and in-process pipelines).

    Returns:
        ``(base_url, stop)``: the ``http://127.0.0.1:<port>/v1`` base URL and a function that
        shuts the server down and closes its socket.
    """
    config = ServerConfig(model_name=model_name, max_new_tokens=max_new_tokens, api_key=api_key)
    server = make_server(model, tokenizer, host=host, port=port, config=config)
    thread = threading.Thread(target=server.serve_forever, name="kdatlas-teacher-server", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join()
        server.server_close()

    return server.base_url, stop
