"""Text-only teacher access: the local backend on tiny models, the HTTP backend against a fake server.

The fake is a stdlib `ThreadingHTTPServer` on 127.0.0.1 (port 0) that plays scripted answers and
records what it received (paths, headers, bodies, how many requests were in flight at once).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from reference_impls.core.generation import generate_responses
from reference_impls.core.models import build_decoder, build_student_config
from reference_impls.core.sampling import nucleus
from reference_impls.core.tokenizer import build_tokenizer, encode_prompt
from reference_impls.tasks.strings import make_split
from reference_impls.teachers.embedded import QUICK_RECIPE
from reference_impls.teachers.http import (
    OpenAICompatibleTeacher,
    TeacherAPIError,
    TeacherResponseError,
)
from reference_impls.teachers.messages import ChatMessage, Completion, GenerationRequest
from reference_impls.teachers.text import LocalTeacher

SECRET = "sk-test-0123456789abcdef"

# ------------------------------------------------------------------------------ the fake server


class FakeServer:
    """Scripted OpenAI-format server: answers from ``script`` first, then echoes successes."""

    def __init__(self, delay: float = 0.0) -> None:
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.received: list[dict[str, Any]] = []
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def then(self, status: int, body: Any, headers: dict[str, str] | None = None) -> FakeServer:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.script.append((status, headers or {}, raw))
        return self

    def _answer(self, path: str, request: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            if self.script:
                return self.script.pop(0)
        if path.endswith("/chat/completions"):
            choice: dict[str, Any] = {
                "message": {"role": "assistant", "content": "re:" + request["messages"][-1]["content"]}
            }
        else:
            choice = {"text": "re:" + request["prompt"]}
        choices = [{"index": k, **choice, "finish_reason": "stop"} for k in range(request.get("n", 1))]
        usage = {
            "prompt_tokens": 7,
            "completion_tokens": 3 * len(choices),
            "total_tokens": 7 + 3 * len(choices),
        }
        return 200, {}, json.dumps({"choices": choices, "usage": usage}).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with server.lock:
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    server.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    time.sleep(server.delay)
                    status, headers, raw = server._answer(self.path, body)
                finally:
                    # Done before the answer is sent: once the client has it, it may start the
                    # next request, which must not find this one still counted (a race under load).
                    with server.lock:
                        server.active -= 1
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        return Handler


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def make_teacher(server: FakeServer, **kwargs: Any) -> tuple[OpenAICompatibleTeacher, list[float]]:
    """A teacher on the fake whose waits are recorded instead of slept."""
    sleeps: list[float] = []
    options = {"api_key_env": "KDATLAS_TEST_KEY", "max_retries": 3, "backoff_base": 0.5, **kwargs}
    return OpenAICompatibleTeacher(server.url, "tiny", sleep=sleeps.append, **options), sleeps


CHAT = GenerationRequest([{"role": "user", "content": "hi"}], max_new_tokens=5, seed=3, stop=["\n"])

# ------------------------------------------------------------------------------ HTTP backend


def test_chat_request_and_answer(server: FakeServer) -> None:
    teacher, _ = make_teacher(server)
    (completion,) = teacher.generate([CHAT])
    assert completion == Completion("re:hi", "stop", prompt_tokens=7, completion_tokens=3)
    sent = server.received[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "n": 1,
        "seed": 3,
        "stop": ["\n"],
    }
    assert (teacher.stats.prompt_tokens, teacher.stats.completion_tokens) == (7, 3)


def test_completions_request_with_logprobs(server: FakeServer) -> None:
    logprobs = {
        "tokens": ["a", "b"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"x": -3.0, "a": -0.1}, {"b": -0.2, "c": -2.0}],
    }
    server.then(
        200, {"choices": [{"index": 0, "text": "ab", "finish_reason": "length", "logprobs": logprobs}]}
    )
    teacher, _ = make_teacher(server)
    (completion,) = teacher.generate([GenerationRequest("12+3=", logprobs=2)])
    assert server.received[0]["path"] == "/v1/completions"
    assert server.received[0]["body"]["prompt"] == "12+3=" and server.received[0]["body"]["logprobs"] == 2
    assert (completion.text, completion.finish_reason, completion.prompt_tokens) == ("ab", "length", None)
    assert completion.logprobs is not None
    assert [t.token for t in completion.logprobs] == ["a", "b"]
    assert completion.logprobs[0].top_logprobs == (("a", -0.1), ("x", -3.0))  # most likely first


def test_chat_logprobs_and_n(server: FakeServer) -> None:
    token = {"token": "o", "logprob": -0.5, "top_logprobs": [{"token": "o", "logprob": -0.5}]}
    choices = [
        {
            "index": 1,
            "message": {"content": "two"},
            "finish_reason": "stop",
            "logprobs": {"content": [token]},
        },
        {"index": 0, "message": {"content": None}, "finish_reason": "length", "logprobs": {"content": []}},
    ]
    server.then(200, {"choices": choices, "usage": {"prompt_tokens": 4, "completion_tokens": 9}})
    teacher, _ = make_teacher(server)
    request = GenerationRequest([ChatMessage("user", "x")], n=2, temperature=0.7, logprobs=1)
    first, second = teacher.generate([request])
    assert server.received[0]["body"]["logprobs"] is True and server.received[0]["body"]["top_logprobs"] == 1
    assert (first.index, first.text, first.completion_tokens) == (0, "", 0)  # null content is empty text
    assert (second.index, second.text, second.completion_tokens) == (1, "two", 1)
    assert second.logprobs is not None and second.logprobs[0].top_logprobs == (("o", -0.5),)


def test_429_waits_for_retry_after_then_succeeds(server: FakeServer) -> None:
    server.then(429, {"error": {"message": "slow down"}}, {"Retry-After": "2"})
    teacher, sleeps = make_teacher(server)
    assert teacher.generate([CHAT])[0].text == "re:hi"
    assert sleeps == [2.0]
    assert (len(server.received), teacher.stats.retries, teacher.stats.http_requests) == (2, 1, 2)


def test_5xx_retried_with_exponential_backoff(server: FakeServer) -> None:
    server.then(500, b"boom").then(503, {"error": "overloaded"})
    teacher, sleeps = make_teacher(server, backoff_base=0.5)
    assert teacher.generate([CHAT])[0].text == "re:hi"
    assert len(server.received) == 3 and teacher.stats.retries == 2
    # Jitter draws each delay from [half, all] of base * 2^attempt.
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_retries_exhausted(server: FakeServer) -> None:
    for _ in range(3):
        server.then(502, b"bad gateway")
    teacher, sleeps = make_teacher(server, max_retries=2)
    with pytest.raises(TeacherAPIError, match=r"failed after 3 attempts; last: HTTP 502: bad gateway"):
        teacher.generate([CHAT])
    assert len(sleeps) == 2


def test_4xx_raises_at_once_with_server_message(server: FakeServer) -> None:
    server.then(400, {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}})
    teacher, sleeps = make_teacher(server)
    with pytest.raises(TeacherAPIError, match="HTTP 400: max_tokens is too large") as info:
        teacher.generate([CHAT])
    assert info.value.status == 400
    assert len(server.received) == 1 and sleeps == []


def test_api_key_sent_from_environment_and_never_shown(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher, _ = make_teacher(server)
    teacher.generate([CHAT])
    assert "Authorization" not in server.received[0]["headers"]  # no key: fine for local servers
    monkeypatch.setenv("KDATLAS_TEST_KEY", SECRET)  # read at call time, not at construction
    teacher.generate([CHAT])
    assert server.received[1]["headers"]["Authorization"] == f"Bearer {SECRET}"
    # A server that echoes the key in its error text: the message is redacted.
    server.then(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}})
    with pytest.raises(TeacherAPIError) as info:
        teacher.generate([CHAT])
    assert SECRET not in str(info.value) and "***" in str(info.value) and "API key" in str(info.value)
    for text in (repr(teacher), teacher.identity(), str(vars(teacher))):
        assert SECRET not in text


def test_concurrency_limit_and_order(server: FakeServer) -> None:
    server.delay = 0.05
    teacher, _ = make_teacher(server, max_concurrency=3)
    requests = [GenerationRequest(f"p{i}") for i in range(9)]
    completions = teacher.generate(requests)
    assert [c.text for c in completions] == [f"re:p{i}" for i in range(9)]
    assert 2 <= server.max_active <= 3


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>proxy error</html>", "invalid JSON"),
        ({"choices": []}, "'choices' is empty"),
        ({"choices": [{"index": 0, "finish_reason": "stop"}]}, "'message'"),
        ({"object": "error"}, "'choices'"),
        ({"choices": [{"message": {"content": 3}}]}, "not a string"),
    ],
)
def test_malformed_answers_raise_clear_errors(server: FakeServer, body: Any, problem: str) -> None:
    server.then(200, body)
    teacher, sleeps = make_teacher(server)
    with pytest.raises(TeacherResponseError, match=r"answer|JSON") as info:
        teacher.generate([CHAT])
    assert problem in str(info.value)
    assert sleeps == []  # not retried


def test_unreachable_server() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    teacher = OpenAICompatibleTeacher(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, sleep=sleeps.append)
    with pytest.raises(TeacherAPIError, match="is the server running"):
        teacher.generate([GenerationRequest("x")])
    assert len(sleeps) == 1


def test_identity_and_url_checks() -> None:
    teacher = OpenAICompatibleTeacher("http://127.0.0.1:8000/v1/", "qwen", revision="2025-01")
    assert teacher.identity() == "openai-compatible:http://127.0.0.1:8000/v1|qwen|2025-01"
    with pytest.raises(ValueError, match="credentials"):
        OpenAICompatibleTeacher("http://user:pw@host/v1", "m")
    with pytest.raises(ValueError, match="http"):
        OpenAICompatibleTeacher("127.0.0.1:8000", "m")


# ------------------------------------------------------------------------------ requests


def test_request_validation_and_round_trip() -> None:
    with pytest.raises(ValueError, match=r"temperature must be >= 0.*top_p must be in \(0, 1\]"):
        GenerationRequest("x", temperature=-1, top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationRequest("x", max_new_tokens=0)
    with pytest.raises(ValueError, match="no chat messages"):
        GenerationRequest([])
    with pytest.raises(ValueError, match="role"):
        GenerationRequest([{"content": "x"}])
    request = GenerationRequest([{"role": "user", "content": "x"}], stop="\n", logprobs=2)
    assert request.stop == ("\n",) and request.is_chat and hash(request)
    assert GenerationRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request


# ------------------------------------------------------------------------------ local backend


@pytest.fixture(scope="module")
def tiny() -> LocalTeacher:
    tokenizer = build_tokenizer()
    return LocalTeacher(build_decoder(build_student_config(tokenizer), 0), tokenizer)


PROMPTS = [e.prompt for e in make_split("test", 6, seed=1)]


def test_greedy_matches_generate_responses(tiny: LocalTeacher) -> None:
    expected = generate_responses(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=12)
    completions = tiny.generate([GenerationRequest(p, max_new_tokens=12) for p in PROMPTS])
    assert [c.text for c in completions] == expected
    for prompt, completion in zip(PROMPTS, completions, strict=True):
        assert completion.prompt_tokens == len(encode_prompt(tiny.tokenizer, prompt))
        assert completion.completion_tokens is not None and 1 <= completion.completion_tokens <= 12
        if completion.finish_reason == "length":
            assert completion.completion_tokens == 12


def test_sampling_is_reproducible_per_request(tiny: LocalTeacher) -> None:
    def texts(seed: int, prompts: list[str]) -> list[str]:
        requests = [
            GenerationRequest(p, max_new_tokens=10, temperature=1.0, top_p=0.95, seed=seed) for p in prompts
        ]
        return [c.text for c in tiny.generate(requests)]

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = texts(7, PROMPTS)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    assert texts(7, PROMPTS) == first
    assert texts(7, PROMPTS[2:3]) == first[2:3]  # independent of the other requests in the call
    assert texts(8, PROMPTS) != first


def test_batched_samples_equal_their_single_seeded_requests(tiny: LocalTeacher) -> None:
    # Sample k of a request seeded s is the sample of the single request seeded s + k, whatever
    # else shares the batch: what lets a cache store samples one by one.
    many = GenerationRequest(PROMPTS[0], max_new_tokens=8, temperature=1.0, seed=5, n=3)
    together = [c.text for c in tiny.generate([many, *[replace(many, prompt=p, n=1) for p in PROMPTS[1:]]])][
        :3
    ]
    alone = [c.text for c in tiny.generate([replace(many, n=1, seed=5 + k) for k in range(3)])]
    assert together == alone
    assert len(set(alone)) > 1  # different seeds, different samples (at temperature 1)


def test_nucleus_keeps_the_smallest_set_reaching_top_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.9, 0.05, 0.03, 0.02]])
    kept = nucleus(probs, 0.8)
    assert torch.allclose(kept[0], torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.allclose(kept[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert torch.equal(nucleus(probs, 1.0), probs / probs.sum(-1, keepdim=True))


def test_n_samples_and_mixed_order(tiny: LocalTeacher) -> None:
    greedy = GenerationRequest(PROMPTS[0], max_new_tokens=6, n=2)
    sampled = GenerationRequest(PROMPTS[1], max_new_tokens=6, n=3, temperature=1.0, seed=0)
    completions = tiny.generate([sampled, greedy])
    assert [c.index for c in completions] == [0, 1, 2, 0, 1]
    assert completions[3] == completions[4].__class__(**{**completions[4].to_dict(), "index": 0})


def _bias_logits(model: torch.nn.Module, bias: torch.Tensor) -> torch.utils.hooks.RemovableHandle:
    return model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)


def test_eos_first_gives_empty_text(tiny: LocalTeacher) -> None:
    bias = torch.zeros(len(tiny.tokenizer))
    bias[tiny.tokenizer.eos_token_id] = 1e4
    handle = _bias_logits(tiny.model, bias)
    try:
        completions = tiny.generate(
            [
                GenerationRequest(PROMPTS[0], logprobs=2),
                GenerationRequest(PROMPTS[1], temperature=1.0, seed=1),
            ]
        )
    finally:
        handle.remove()
    for completion in completions:
        assert (completion.text, completion.finish_reason, completion.completion_tokens) == ("", "stop", 1)
    assert completions[0].logprobs == ()


def test_stop_strings_and_logprobs(tiny: LocalTeacher) -> None:
    # Forbid special tokens so that every generated token is one character of the text.
    bias = torch.zeros(len(tiny.tokenizer))
    bias[tiny.tokenizer.all_special_ids] = -1e4
    handle = _bias_logits(tiny.model, bias)
    try:
        (full,) = tiny.generate([GenerationRequest(PROMPTS[0], max_new_tokens=10, logprobs=3)])
        stop = full.text[4:6]
        (cut,) = tiny.generate([GenerationRequest(PROMPTS[0], max_new_tokens=10, stop=[stop, "never"])])
        with torch.no_grad():
            ids = torch.tensor([encode_prompt(tiny.tokenizer, PROMPTS[0])])
            direct = tiny.model(ids).logits[0, -1].float().log_softmax(-1)
    finally:
        handle.remove()
    assert (len(full.text), full.finish_reason, full.completion_tokens) == (10, "length", 10)
    position = full.text.find(stop)
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == (
        full.text[:position],
        "stop",
        position + 2,
    )

    assert full.logprobs is not None and len(full.logprobs) == 10
    for step in full.logprobs:
        values = [lp for _, lp in step.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert step.top_logprobs[0] == (step.token, step.logprob)  # greedy picks the most likely
    # The first token's log-prob against a direct forward pass (the model's own distribution).
    first_id = tiny.tokenizer.convert_tokens_to_ids(full.logprobs[0].token)
    assert full.logprobs[0].logprob == pytest.approx(float(direct[first_id]), abs=1e-5)


def test_chat_prompt_without_template(tiny: LocalTeacher) -> None:
    plain, chat = tiny.generate(
        [
            GenerationRequest(PROMPTS[0], max_new_tokens=8),
            GenerationRequest([{"role": "user", "content": PROMPTS[0]}], max_new_tokens=8),
        ]
    )
    assert chat == plain
    # The instruction suite's plain conversation format: system line, turns (instruction +
    # reply) one per line, the last user message ends the prompt.
    multi = GenerationRequest(
        [
            ChatMessage("system", "explain"),
            ChatMessage("user", "up: ab ="),
            ChatMessage("assistant", "AB"),
            ChatMessage("user", "rev: abc ="),
        ]
    )
    assert (
        tiny.tokenizer.decode(tiny.prompt_ids(multi), skip_special_tokens=True)
        == "explain\nup: ab =AB\nrev: abc ="
    )


def test_identity_follows_weights(tiny: LocalTeacher) -> None:
    assert tiny.identity() == tiny.identity() and tiny.identity().startswith("local:LlamaForCausalLM#")
    other = LocalTeacher(build_decoder(build_student_config(tiny.tokenizer), 1), tiny.tokenizer)
    assert other.identity() != tiny.identity()
    assert LocalTeacher(tiny.model, tiny.tokenizer, label="mine").identity().startswith("local:mine#")


def test_from_pretrained_local_folder(tiny: LocalTeacher, tmp_path: Any) -> None:
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = LocalTeacher.from_pretrained(str(tmp_path))
    requests = [GenerationRequest(p, max_new_tokens=6) for p in PROMPTS[:2]]
    assert loaded.generate(requests) == tiny.generate(requests)
    assert loaded.identity().split("#")[1] == tiny.identity().split("#")[1]  # same weights, same fingerprint


def test_embedded_teacher_writes_text(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDATLAS_CACHE", str(tmp_path))
    teacher = LocalTeacher.embedded(progress=False, recipe=QUICK_RECIPE)
    assert teacher.identity().startswith("local:embedded/")
    (completion,) = teacher.generate([GenerationRequest(PROMPTS[0], max_new_tokens=4)])
    assert isinstance(completion.text, str) and completion.completion_tokens is not None
