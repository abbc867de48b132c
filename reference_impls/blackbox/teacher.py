"""Teacher access through text only: the interface every black-box method talks to.

In black-box distillation the student never sees the teacher's weights or logits, only what it
writes (and, where an API offers them, the top-k log-probabilities of the tokens it wrote). This
module is that boundary:

* `GenerationRequest` / `Completion`: one prompt (plain text or chat messages) with its sampling
  parameters in, the text out with its finish reason, token counts and optional top-k log-probs.
  Both convert to and from plain JSON (`to_dict` / `from_dict`) so a cache can store them.
* `TextTeacher`: the abstract teacher. `generate` returns completions in request order;
  `iter_generate` yields them as they finish (a cache persists each one at once, so an
  interrupted run loses only the requests in flight). `identity` is a stable string naming the
  backend, model and weights, used in cache keys; it never contains a secret.
* `LocalTeacher`: any transformers causal LM (the embedded tiny teacher, a local folder or a
  hub id) generating with HF ``generate``.
* `OpenAICompatibleTeacher`: any server speaking the OpenAI HTTP format (OpenAI, vLLM, TGI,
  llama.cpp, ``kdatlas serve-teacher``), standard library only.

Conventions shared by both backends, following the OpenAI API:

* ``temperature == 0`` is greedy decoding; ``n`` completions per request are returned next to
  each other (``Completion.index`` is the sample's position), so ``generate`` returns
  ``sum(r.n for r in requests)`` completions.
* ``finish_reason`` is ``"stop"`` (end-of-sequence or a stop string) or ``"length"``
  (``max_new_tokens`` reached); stop strings are cut from the text.
* ``completion_tokens`` counts the generated tokens including the one that ended the
  completion (EOS), as servers bill them.
"""

from __future__ import annotations

import abc
import email.utils
import hashlib
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.common.generation import _left_pad
from reference_impls.common.teacher import TeacherRecipe, load_or_train_teacher, teacher_dir
from reference_impls.common.tokenizer import encode_prompt, pad_id

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ requests, results


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
    """What the teacher wrote for one sample of one request.

    Attributes:
        text: The completion (stop strings and special tokens removed; may be empty).
        finish_reason: ``"stop"``, ``"length"`` or whatever else the server reported.
        prompt_tokens: Tokens in the prompt (``None`` if the backend did not say).
        completion_tokens: Generated tokens including the one that ended it (``None`` if unknown).
        logprobs: Per generated token, when requested and offered by the backend.
        index: Position of this sample among the request's ``n``.
    """

    text: str
    finish_reason: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    index: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Completion:
        """Inverse of `to_dict` (JSON turns tuples into lists; they are restored)."""
        data = dict(data)
        if data.get("logprobs") is not None:
            data["logprobs"] = tuple(
                TokenLogprob(t["token"], t["logprob"], tuple((s, lp) for s, lp in t["top_logprobs"]))
                for t in data["logprobs"]
            )
        return cls(**data)


# ------------------------------------------------------------------------------ the interface


class TextTeacher(abc.ABC):
    """A teacher seen only through the text it writes."""

    @abc.abstractmethod
    def identity(self) -> str:
        """A stable name of the backend, model and weights/revision, for cache keys (never a secret)."""

    @abc.abstractmethod
    def iter_generate(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, list[Completion]]]:
        """Yield ``(request index, its n completions)`` as each request finishes, in any order."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """All completions, in request order (a request's ``n`` samples next to each other)."""
        by_request: dict[int, list[Completion]] = dict(self.iter_generate(requests))
        return [c for i in range(len(requests)) for c in by_request[i]]


# ------------------------------------------------------------------------------ local models


class LocalTeacher(TextTeacher):
    """A transformers causal LM used as a text-only teacher.

    Plain prompts are encoded as ``[bos] prompt`` (the suite's training convention, as in
    `generate_responses`, whose greedy output this reproduces exactly). Chat prompts go through
    the tokenizer's chat template; a tokenizer without one (the embedded teacher) gets the
    content of a lone user message as its prompt, else ``role: content`` lines.

    Greedy requests are decoded together in batches. Each sampled request is decoded on its own
    under its seed, so its output does not depend on which other requests share the call (a
    cache that resumes a run gets the same samples). Log-probs are those of the model's own
    distribution (before temperature and top-p). Calls are serialised by a lock, so one
    instance may serve several threads (``kdatlas serve-teacher``).

    Args:
        model: Any causal LM.
        tokenizer: Its tokenizer.
        label: Name used in `identity` (default: the model's ``name_or_path`` and commit).
        batch_size: Greedy prompts decoded together.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        label: str | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._label = label
        self._fingerprint: str | None = None
        self._lock = threading.Lock()
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self._eos_ids = sorted(i for i in eos_ids if i is not None)
        if not self._eos_ids:
            raise ValueError("the tokenizer and model define no eos token; set tokenizer.eos_token first")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 64,
    ) -> LocalTeacher:
        """Load a local folder or hub id (remote code only when ``trust_remote_code``)."""
        tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code
        )
        label = f"{name_or_path}@{revision}" if revision else None
        return cls(model.to(device).eval(), tokenizer, label=label, batch_size=batch_size)

    @classmethod
    def embedded(
        cls,
        device: str | torch.device = "cpu",
        progress: bool = True,
        *,
        recipe: TeacherRecipe = TeacherRecipe(),
    ) -> LocalTeacher:
        """The embedded tiny teacher (trained on first use, then cached), as a text-only teacher."""
        model, tokenizer = load_or_train_teacher(device, progress, recipe=recipe)
        return cls(model, tokenizer, label=f"embedded/{teacher_dir(recipe).name}")

    def __repr__(self) -> str:
        return f"LocalTeacher({self.identity()!r})"

    def identity(self) -> str:
        """``local:<label>#<weights fingerprint>``; the fingerprint changes when the weights do."""
        if self._fingerprint is None:
            self._fingerprint = _weights_fingerprint(self.model, self.tokenizer)
        label = self._label
        if label is None:
            name = self.model.config.name_or_path or type(self.model).__name__
            commit = getattr(self.model.config, "_commit_hash", None)
            label = f"{name}@{commit}" if commit else name
        return f"local:{label}#{self._fingerprint}"

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids the model is conditioned on for ``request``."""
        if isinstance(request.prompt, str):
            return encode_prompt(self.tokenizer, request.prompt)
        messages = [asdict(m) for m in request.prompt]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            # The template writes its own BOS text, so no special tokens are added again.
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(messages) == 1 and messages[0]["role"] == "user":
            return encode_prompt(self.tokenizer, messages[0]["content"])
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return encode_prompt(self.tokenizer, "\n".join([*lines, "assistant: "]))

    def iter_generate(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, list[Completion]]]:
        """Greedy requests in batches first, then each sampled request under its own seed."""
        greedy = [i for i, r in enumerate(requests) if r.temperature == 0]
        sampled = [i for i, r in enumerate(requests) if r.temperature > 0]
        for start in range(0, len(greedy), self.batch_size):
            chunk = greedy[start : start + self.batch_size]
            with self._lock:
                rows = self._decode([requests[i] for i in chunk], num_return_sequences=1)
            for i, row in zip(chunk, rows, strict=True):
                # Greedy decoding is deterministic: the n samples are one decode repeated.
                yield i, [_with_index(row[0], k) for k in range(requests[i].n)]
        for i in sampled:
            request = requests[i]
            with self._lock, torch.random.fork_rng(devices=self._rng_devices()):
                if request.seed is not None:
                    torch.manual_seed(request.seed)
                (row,) = self._decode([request], num_return_sequences=request.n)
            yield i, row

    def _rng_devices(self) -> list[torch.device]:
        device = next(self.model.parameters()).device
        return [device] if device.type == "cuda" else []

    @torch.no_grad()
    def _decode(
        self, requests: Sequence[GenerationRequest], num_return_sequences: int
    ) -> list[list[Completion]]:
        """Decode ``requests`` in one left-padded batch; all are greedy or there is only one."""
        prompts = [self.prompt_ids(r) for r in requests]
        input_ids, attention_mask = _left_pad(prompts, pad_id(self.tokenizer))
        device = next(self.model.parameters()).device
        first = requests[0]
        sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if first.temperature > 0:
            # top_k=0 switches off any top-k default a hub generation config sets: requests say
            # nothing about top-k, so none is applied.
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p, "top_k": 0}
        want_logprobs = any(r.logprobs is not None for r in requests)
        was_training = self.model.training
        self.model.eval()
        try:
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max(r.max_new_tokens for r in requests),
                num_return_sequences=num_return_sequences,
                eos_token_id=self._eos_ids,
                pad_token_id=pad_id(self.tokenizer),
                return_dict_in_generate=True,
                output_logits=want_logprobs,
                **sampling,
            )
        finally:
            self.model.train(was_training)
        generated = output.sequences[:, input_ids.shape[1] :].tolist()
        step_logprobs = None
        if want_logprobs:
            # [rows, steps, vocab]: the model's raw next-token distribution at each step.
            step_logprobs = torch.stack(output.logits, dim=1).float().log_softmax(-1).cpu()
        results: list[list[Completion]] = []
        for r, request in enumerate(requests):
            samples = []
            for k in range(num_return_sequences):
                row = r * num_return_sequences + k
                row_logprobs = (
                    step_logprobs[row] if step_logprobs is not None and request.logprobs is not None else None
                )
                samples.append(self._finish(request, len(prompts[r]), generated[row], row_logprobs, k))
            results.append(samples)
        return results

    def _finish(
        self,
        request: GenerationRequest,
        prompt_tokens: int,
        ids: list[int],
        logprobs: torch.Tensor | None,
        index: int,
    ) -> Completion:
        """Cut one generated row at its limit, first EOS or first stop string."""
        ids = ids[: request.max_new_tokens]  # the batch may have decoded longer for other rows
        eos_at = next((j for j, t in enumerate(ids) if t in self._eos_ids), None)
        finish_reason, count = ("stop", eos_at + 1) if eos_at is not None else ("length", len(ids))
        kept = ids[:count] if eos_at is None else ids[:eos_at]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = _first_stop(text, request.stop)
        if cut is not None:
            position, stop = cut
            # The generated tokens up to the one that completed the stop string are what a server
            # would have produced (and billed) before stopping.
            count = next(
                j
                for j in range(1, len(kept) + 1)
                if len(self.tokenizer.decode(kept[:j], skip_special_tokens=True)) >= position + len(stop)
            )
            text, finish_reason, kept = text[:position], "stop", kept[:count]
        token_logprobs = None
        if logprobs is not None and request.logprobs is not None:
            token_logprobs = tuple(
                self._token_logprob(logprobs[j], t, request.logprobs) for j, t in enumerate(kept)
            )
        return Completion(text, finish_reason, prompt_tokens, count, token_logprobs, index)

    def _token_logprob(self, step: torch.Tensor, token_id: int, k: int) -> TokenLogprob:
        top = step.topk(k) if k > 0 else None
        alternatives = (
            ()
            if top is None
            else tuple(
                (self.tokenizer.decode([i]), float(v))
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            )
        )
        return TokenLogprob(self.tokenizer.decode([token_id]), float(step[token_id]), alternatives)


def _with_index(completion: Completion, index: int) -> Completion:
    return replace(completion, index=index)


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """``(position, stop string)`` of the earliest stop string in ``text``, or None."""
    hits = [(text.find(s), s) for s in stops if s in text]
    return min(hits) if hits else None


def _weights_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the weights and vocabulary, cheap even for large models.

    Each tensor contributes its name, shape, dtype and the bytes of up to 4096 evenly spaced
    entries: exact (unlike sums, the same on every device), and fine-tuning changes them.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()))
    digest.update(vocabulary.encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------ HTTP servers


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
