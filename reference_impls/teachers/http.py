"""The HTTP backend: any server that speaks the OpenAI wire format, standard library only.

`OpenAICompatibleTeacher` sends chat prompts to ``{base_url}/chat/completions`` and plain prompts
to ``{base_url}/completions`` (OpenAI, vLLM, TGI, llama.cpp servers, ``kdatlas serve-teacher``).
The API key is read from an environment variable at call time and never stored, logged or put
in an error; 429/5xx answers and network errors are retried with exponential backoff and jitter
(``Retry-After`` obeyed); other 4xx raise `TeacherAPIError` with the server's message; requests
run concurrently up to a limit; `RequestStats` counts requests, retries and tokens.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from reference_impls.teachers.messages import Completion, GenerationRequest, TokenLogprob
from reference_impls.teachers.text import TextTeacher

logger = logging.getLogger(__name__)


class TeacherAPIError(RuntimeError):
    """The teacher server refused a request, failed repeatedly, or answered something unreadable.

    Attributes:
        status: The HTTP status, or ``None`` for network errors and unreadable answers.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TeacherResponseError(TeacherAPIError):
    """The server answered 2xx with a body that is not an OpenAI-format completion."""


@dataclass
class RequestStats:
    """Counters of one `OpenAICompatibleTeacher` (updated from several threads under a lock)."""

    http_requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Increase the named counters."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Following a redirect would resend the Authorization header to wherever the server points.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_RATE_LIMITED = 429


class OpenAICompatibleTeacher(TextTeacher):
    """A teacher behind an OpenAI-format HTTP endpoint (OpenAI, vLLM, TGI, llama.cpp, ...).

    Chat prompts go to ``{base_url}/chat/completions``, plain prompts to
    ``{base_url}/completions``. The API key is read from the environment variable
    ``api_key_env`` at every call (so it is never stored on the object) and sent as
    ``Authorization: Bearer``; without it no header is sent, which local servers accept. 429
    and 5xx answers and network errors are retried with exponential backoff and jitter
    (``Retry-After`` is obeyed); other 4xx raise `TeacherAPIError` at once with the server's
    message. Requests of one call run concurrently, at most ``max_concurrency`` at a time.

    Args:
        base_url: The API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: The model name the server expects.
        api_key_env: Environment variable holding the key (``None``: never send one).
        timeout: Seconds to wait for one HTTP answer.
        max_retries: Retries after the first attempt of each request.
        max_concurrency: Requests in flight at once.
        revision: Extra text for `identity` (e.g. a model snapshot date) when the model name alone
            does not pin the weights.
        backoff_base: First retry delay in seconds (doubled on each retry, capped at ``backoff_max``).
        backoff_max: Largest delay between retries, ``Retry-After`` included.
        sleep: How to wait (tests pass a recorder instead of `time.sleep`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        *,
        timeout: float = 120.0,
        max_retries: int = 5,
        max_concurrency: int = 8,
        revision: str | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}"
            )
        if parsed.username or parsed.password:
            raise ValueError("base_url must not contain credentials; put the key in the api_key_env variable")
        if max_concurrency < 1 or max_retries < 0:
            raise ValueError("max_concurrency must be >= 1 and max_retries >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.revision = revision
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stats = RequestStats()
        self._sleep = sleep
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if parsed.hostname in _LOOPBACK:
            handlers.append(urllib.request.ProxyHandler({}))  # a proxy cannot reach our loopback
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleTeacher(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    def identity(self) -> str:
        """``openai-compatible:<base_url>|<model>[|<revision>]`` (no key, no query string)."""
        parsed = urllib.parse.urlsplit(self.base_url)
        url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path, "", ""))
        return f"openai-compatible:{url}|{self.model}" + (f"|{self.revision}" if self.revision else "")

    def iter_generate(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, list[Completion]]]:
        """Run the requests concurrently; the first error cancels the ones not yet started."""
        if not requests:
            return
        executor = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests)))
        pending: dict[Future[list[Completion]], int] = {
            executor.submit(self._complete, r): i for i, r in enumerate(requests)
        }
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        finally:
            for future in pending:
                future.cancel()
            executor.shutdown(wait=True)

    # --------------------------------------------------------------------------- one request

    def _complete(self, request: GenerationRequest) -> list[Completion]:
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "n": request.n,
        }
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.is_chat:
            payload["messages"] = [asdict(m) for m in request.prompt]  # type: ignore[union-attr]
            if request.logprobs is not None:
                payload.update(logprobs=True, top_logprobs=request.logprobs)
            body = self._post("/chat/completions", payload)
        else:
            payload["prompt"] = request.prompt
            if request.logprobs is not None:
                payload["logprobs"] = request.logprobs
            body = self._post("/completions", payload)
        completions = _parse_completions(body, chat=request.is_chat, n=request.n)
        self.stats.add(
            prompt_tokens=completions[0].prompt_tokens or 0,
            completion_tokens=_total_completion_tokens(body),
        )
        return completions

    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        """POST JSON, retrying transient failures; the decoded JSON answer."""
        url = self.base_url + path
        data = json.dumps(payload).encode()
        for attempt in range(self.max_retries + 1):
            key = os.environ.get(self.api_key_env) if self.api_key_env else None
            headers = {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "kdatlas",
            }
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self.stats.add(http_requests=1)
            retry_after: float | None = None
            try:
                with self._opener.open(
                    urllib.request.Request(url, data, headers, method="POST"), timeout=self.timeout
                ) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                message = _redact(_server_message(_read_quietly(error)), key)
                if error.code != _RATE_LIMITED and error.code < 500:
                    hint = " (check the API key variable)" if error.code in (401, 403) else ""
                    raise TeacherAPIError(
                        f"{url} answered HTTP {error.code}{hint}: {message}", status=error.code
                    ) from None
                retry_after = _retry_after_seconds(error.headers.get("Retry-After"))
                problem = f"HTTP {error.code}: {message}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
                reason = getattr(error, "reason", error)
                problem = _redact(f"network error ({reason}); is the server running at {self.base_url}?", key)
            else:
                try:
                    return json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    excerpt = _redact(raw[:200].decode("utf-8", "replace"), key)
                    raise TeacherResponseError(f"{url} answered with invalid JSON: {excerpt!r}") from None
            if attempt == self.max_retries:
                raise TeacherAPIError(f"{url} failed after {attempt + 1} attempts; last: {problem}")
            delay = self._backoff(attempt, retry_after)
            logger.warning(
                "teacher request to %s failed (%s); retry %d in %.1fs", url, problem, attempt + 1, delay
            )
            self.stats.add(retries=1)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        # Jitter spreads the retries of concurrent workers so they do not hit the server together.
        return min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)


def _read_quietly(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read()
    except (OSError, http.client.HTTPException):
        return b""


def _server_message(raw: bytes) -> str:
    """The error text of an OpenAI-style (``{"error": {"message"}}``), TGI or plain-text body."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text[:500] or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        for name in ("error", "message", "detail"):
            if isinstance(body.get(name), str):
                return body[name][:500]
    return text[:500]


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _parse_completions(body: Any, *, chat: bool, n: int) -> list[Completion]:
    """The completions of an OpenAI-format answer, sorted by choice index."""
    try:
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        if not choices:
            raise ValueError("'choices' is empty")
        usage = body.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        # usage is summed over the n choices: per-choice counts are known only for n == 1.
        total = usage.get("completion_tokens")
        completions = []
        for k, choice in enumerate(choices):
            text = choice["message"]["content"] if chat else choice["text"]
            if text is not None and not isinstance(text, str):
                raise ValueError(f"completion text is {type(text).__name__}, not a string")
            logprobs = _parse_logprobs(choice.get("logprobs"), chat=chat)
            count = total if len(choices) == 1 else (len(logprobs) if logprobs is not None else None)
            completions.append(
                Completion(
                    text or "",
                    str(choice.get("finish_reason") or "unknown"),
                    prompt_tokens,
                    count,
                    logprobs,
                    k,
                )
            )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        excerpt = json.dumps(body)[:300] if not isinstance(body, bytes) else repr(body[:300])
        raise TeacherResponseError(
            f"the server's answer is not an OpenAI {'chat ' if chat else ''}completion ({error!r}): {excerpt}"
        ) from None
    if len(completions) != n:
        logger.warning("asked the teacher for %d completions, got %d", n, len(completions))
    return completions


def _parse_logprobs(raw: Any, *, chat: bool) -> tuple[TokenLogprob, ...] | None:
    """Chat format ``{"content": [{token, logprob, top_logprobs}]}`` or completions format
    ``{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}]}``."""
    if raw is None:
        return None
    if chat:
        return tuple(
            TokenLogprob(
                t["token"],
                float(t["logprob"]),
                tuple((a["token"], float(a["logprob"])) for a in t.get("top_logprobs") or ()),
            )
            for t in raw.get("content") or ()
        )
    tops = raw.get("top_logprobs") or [None] * len(raw["tokens"])
    return tuple(
        TokenLogprob(
            token,
            float(logprob) if logprob is not None else float("nan"),  # some servers send null first
            tuple(sorted(((t, float(v)) for t, v in (top or {}).items()), key=lambda item: -item[1])),
        )
        for token, logprob, top in zip(raw["tokens"], raw["token_logprobs"], tops, strict=True)
    )


def _total_completion_tokens(body: Any) -> int:
    usage = body.get("usage") if isinstance(body, dict) else None
    return int((usage or {}).get("completion_tokens") or 0)
