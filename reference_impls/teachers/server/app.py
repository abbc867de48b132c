"""The HTTP side of the teacher server: routing, authentication, limits, and the model behind them.

`TeacherServer` owns the model and generates with `reference_impls.teachers.text.LocalTeacher`;
`_Handler` routes each request, checks the bearer key and turns every failure into an OpenAI
error object. What a request may contain is checked in `params`, and what an answer looks like
is built in `responses`; this module only moves them over the wire.
"""

from __future__ import annotations

import hmac
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.teachers.messages import ChatMessage, GenerationRequest
from reference_impls.teachers.server.params import (
    EMBEDDED_NAME,
    ApiError,
    SamplingParams,
    ServerConfig,
    bad_request,
    check_bind_host,
    check_model,
    parse_messages,
    parse_prompts,
    parse_sampling,
)
from reference_impls.teachers.server.responses import Choice, chat_response, completion_response
from reference_impls.teachers.text import LocalTeacher

# The package's name, not this module's: log lines keep the logger name they had before the split.
logger = logging.getLogger(__package__)

MAX_BODY_BYTES = 1 << 20


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
                raise bad_request(
                    f"prompt {index} has {length} tokens; with max_tokens={params.max_tokens} it exceeds the "
                    f"model's context of {limit} tokens: shorten the prompt or lower max_tokens",
                    "context_length_exceeded",
                    "prompt",
                )
        completions = iter(self.teacher.generate(requests))
        choices = [[Choice.from_completion(next(completions)) for _ in range(params.n)] for _ in requests]
        return choices, prompt_tokens


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
            raise bad_request("missing Content-Length: send a JSON body", "invalid_request") from None
        if length > MAX_BODY_BYTES:
            raise ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes", "too_large"
            )
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise bad_request(f"the body is not valid JSON: {error}", "invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object", "invalid_json")
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
        return completion_response(
            rows,
            prompt_tokens,
            model_name=self.server.config.model_name,
            with_logprobs=params.top_logprobs is not None,
        )

    def _chat(self) -> dict[str, Any]:
        body = self._body()
        check_model(body, self.server.config)
        if "messages" not in body:
            raise bad_request("missing required field 'messages'", "missing_field", "messages")
        messages = parse_messages(body["messages"])
        params = parse_sampling(body, self.server.config, chat=True)
        rows, prompt_tokens = self.server.complete([messages], params)
        return chat_response(
            rows,
            prompt_tokens,
            model_name=self.server.config.model_name,
            with_logprobs=params.top_logprobs is not None,
        )


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
