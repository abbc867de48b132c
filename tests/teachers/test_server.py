"""The OpenAI-compatible teacher server, over real HTTP on 127.0.0.1, with a tiny random model."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from kdatlas.cli import app
from reference_impls.core.generation import generate_responses
from reference_impls.core.models import build_decoder, build_student_config
from reference_impls.core.tokenizer import build_tokenizer, encode_prompt
from reference_impls.teachers.server import (
    EMBEDDED_NAME,
    check_bind_host,
    read_api_key,
    render_chat_prompt,
    serve_in_thread,
)

MODEL = "tiny-test-model"
KEY = "sk-test-do-not-log-0123456789"


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    tokenizer = build_tokenizer()
    return build_decoder(build_student_config(tokenizer), 0).eval(), tokenizer


@pytest.fixture(scope="module")
def base_url(tiny: tuple[Any, Any]) -> Iterator[str]:
    url, stop = serve_in_thread(*tiny, model_name=MODEL, max_new_tokens=12)
    yield url
    stop()


def call(
    url: str, method: str = "GET", body: Any = None, *, raw: bytes | None = None, key: str | None = None
):
    """``(status, parsed JSON body)`` of one request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def complete(url: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    return call(f"{url}/completions", "POST", {"model": MODEL, **fields})


def chat(url: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    return call(f"{url}/chat/completions", "POST", {"model": MODEL, **fields})


def test_models_lists_the_served_model(base_url: str) -> None:
    status, body = call(f"{base_url}/models")
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL] and body["data"][0]["object"] == "model"
    assert call(f"{base_url}/models/{MODEL}")[1]["id"] == MODEL
    assert call(f"{base_url}/models/other")[0] == 404


def test_greedy_completion_equals_generate_responses(base_url: str, tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    prompts = ["rev abcde", "add 12+7"]
    expected = generate_responses(model, tokenizer, prompts, max_new_tokens=9)
    status, body = complete(base_url, prompt=prompts, max_tokens=9, temperature=0)
    assert status == 200
    assert body["object"] == "text_completion" and body["model"] == MODEL and body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int)
    assert [c["text"] for c in body["choices"]] == expected
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        # A random model rarely writes EOS: 9 tokens and no EOS is "length".
        assert choice["finish_reason"] in {"stop", "length"} and choice["logprobs"] is None


def test_usage_counts_prompt_and_completion_tokens(base_url: str, tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    status, body = complete(base_url, prompt="copy xyz", max_tokens=5, temperature=0, n=3)
    assert status == 200 and len(body["choices"]) == 3
    # Text tokens, plus the EOS that ended a "stop" choice (billed, as vLLM does).
    completion = sum(
        len(tokenizer(c["text"], add_special_tokens=False)["input_ids"]) + (c["finish_reason"] == "stop")
        for c in body["choices"]
    )
    prompt_tokens = len(encode_prompt(tokenizer, "copy xyz"))  # BOS included
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    for choice in body["choices"]:
        assert (choice["finish_reason"] == "length") == (len(choice["text"]) == 5)


def test_chat_renders_the_last_user_message_as_the_plain_prompt(base_url: str, tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    status, body = chat(
        base_url, messages=[{"role": "user", "content": "up hello"}], max_tokens=6, temperature=0
    )
    assert status == 200 and body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": generate_responses(model, tokenizer, ["up hello"], max_new_tokens=6)[0],
    }
    assert body["usage"]["prompt_tokens"] == len(encode_prompt(tokenizer, "up hello"))


def test_chat_template_prefixes_system_and_earlier_turns() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "rev ab"},
        {"role": "assistant", "content": "ba"},
        {"role": "user", "content": [{"type": "text", "text": "rev "}, {"type": "text", "text": "cd"}]},
    ]
    assert render_chat_prompt(messages) == "be brief\nrev abba\nrev cd"
    assert render_chat_prompt([{"role": "user", "content": "sort dcba"}]) == "sort dcba"


def test_seeded_sampling_is_reproducible_and_n_gives_distinct_draws(base_url: str) -> None:
    request = {"prompt": "rev hello", "max_tokens": 10, "temperature": 1.0, "top_p": 0.95, "n": 3, "seed": 7}
    first, second = complete(base_url, **request)[1], complete(base_url, **request)[1]
    texts = [c["text"] for c in first["choices"]]
    assert texts == [c["text"] for c in second["choices"]]
    assert len(set(texts)) > 1  # a random model at temperature 1: three equal 10-token draws is ~impossible
    other = complete(base_url, **{**request, "seed": 8})[1]
    assert [c["text"] for c in other["choices"]] != texts
    # Chat follows the same rule.
    messages = [{"role": "user", "content": "rev hello"}]
    a = chat(base_url, messages=messages, max_tokens=8, temperature=0.7, n=2, seed=3)[1]
    b = chat(base_url, messages=messages, max_tokens=8, temperature=0.7, n=2, seed=3)[1]
    assert [c["message"] for c in a["choices"]] == [c["message"] for c in b["choices"]]


def test_stop_strings_cut_the_text(base_url: str) -> None:
    full = complete(base_url, prompt="rev abcdef", max_tokens=12, temperature=0)[1]["choices"][0]["text"]
    stop = full[3:5]  # occurs in the greedy text, so the server must cut before its first occurrence
    status, body = complete(base_url, prompt="rev abcdef", max_tokens=12, temperature=0, stop=[stop, "@@"])
    choice = body["choices"][0]
    assert status == 200
    assert choice["text"] == full[: full.find(stop)] and choice["finish_reason"] == "stop"


def test_logprobs_match_a_direct_forward_pass(base_url: str, tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    status, body = complete(base_url, prompt="count aab", max_tokens=4, temperature=0, logprobs=3)
    assert status == 200
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == list(range(len(choice["text"])))
    ids = (
        encode_prompt(tokenizer, "count aab")
        + tokenizer(choice["text"], add_special_tokens=False)["input_ids"]
    )
    with torch.no_grad():
        direct = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    start = len(ids) - len(logprobs["tokens"]) - 1
    for step, (token, logprob, top) in enumerate(
        zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
    ):
        row = direct[start + step]
        assert logprob == pytest.approx(float(row[tokenizer.convert_tokens_to_ids(token)]), abs=1e-4)
        assert len(top) == 3 and max(top.values()) == pytest.approx(float(row.max()), abs=1e-4)
        assert top[token] == pytest.approx(logprob, abs=1e-6)  # greedy: the chosen token is the top one
    messages = [{"role": "user", "content": "count aab"}]
    chat_body = chat(base_url, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)[
        1
    ]
    content = chat_body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == logprobs["tokens"]
    assert all(len(c["top_logprobs"]) == 2 and c["bytes"] == list(c["token"].encode()) for c in content)


def assert_error(status: int, body: dict[str, Any], want_status: int, want_code: str) -> None:
    assert status == want_status, body
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"])
    assert body["error"]["code"] == want_code and body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/completions", {"prompt": "a"}, "missing_field"),  # no model
        ("/completions", {"model": "gpt-4", "prompt": "a"}, "model_not_found"),
        ("/completions", {"model": MODEL}, "missing_field"),  # no prompt
        ("/completions", {"model": MODEL, "prompt": 3}, "invalid_type"),
        ("/completions", {"model": MODEL, "prompt": "a", "max_tokens": "5"}, "invalid_type"),
        ("/completions", {"model": MODEL, "prompt": "a", "max_tokens": 13}, "invalid_value"),  # over the cap
        ("/completions", {"model": MODEL, "prompt": "a", "temperature": True}, "invalid_type"),
        ("/completions", {"model": MODEL, "prompt": "a", "temperature": 3}, "invalid_value"),
        ("/completions", {"model": MODEL, "prompt": "a", "n": 0}, "invalid_value"),
        ("/completions", {"model": MODEL, "prompt": "a", "stop": [1]}, "invalid_type"),
        ("/completions", {"model": MODEL, "prompt": "a", "stream": True}, "unsupported"),
        ("/completions", {"model": MODEL, "prompt": "a" * 250}, "context_length_exceeded"),
        ("/chat/completions", {"model": MODEL}, "missing_field"),
        ("/chat/completions", {"model": MODEL, "messages": []}, "invalid_type"),
        ("/chat/completions", {"model": MODEL, "messages": [{"role": "bot", "content": "a"}]}, "invalid_value"),
        ("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "invalid_type"),
        ("/chat/completions", {"model": MODEL, "messages": [{"role": "assistant", "content": "a"}]}, "invalid_value"),
        ("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "a"}], "logprobs": 2},
         "invalid_type"),
    ],
)  # fmt: skip
def test_malformed_requests_get_400_with_an_openai_error(
    base_url: str, path: str, body: Any, code: str
) -> None:
    assert_error(*call(f"{base_url}{path}", "POST", body), 400, code)


def test_bad_json_unknown_paths_and_wrong_methods(base_url: str) -> None:
    assert_error(*call(f"{base_url}/completions", "POST", raw=b"{not json"), 400, "invalid_json")
    assert_error(*call(f"{base_url}/completions", "POST", raw=b"[1, 2]"), 400, "invalid_json")
    assert_error(*call(f"{base_url}/embeddings", "POST", {"model": MODEL}), 404, "not_found")
    assert_error(*call(base_url.removesuffix("/v1") + "/", "GET"), 404, "not_found")
    assert_error(*call(f"{base_url}/completions", "GET"), 405, "method_not_allowed")
    # The server still answers after errors.
    assert complete(base_url, prompt="a", max_tokens=1, temperature=0)[0] == 200


def test_api_key_is_required_when_set_and_never_echoed(tiny: tuple[Any, Any]) -> None:
    url, stop = serve_in_thread(*tiny, model_name=MODEL, max_new_tokens=4, api_key=KEY)
    try:
        body = {"model": MODEL, "prompt": "a", "max_tokens": 2, "temperature": 0}
        for key in (None, "wrong", KEY + "x"):
            status, error = call(f"{url}/completions", "POST", body, key=key)
            assert_error(status, error, 401, "invalid_api_key")
            assert KEY not in json.dumps(error)
        assert_error(*call(f"{url}/models"), 401, "invalid_api_key")
        assert call(f"{url}/completions", "POST", body, key=KEY)[0] == 200
        assert call(f"{url}/models", key=KEY)[0] == 200
    finally:
        stop()


def test_without_a_key_any_or_no_authorization_is_accepted(base_url: str) -> None:
    assert call(f"{base_url}/models", key="anything")[0] == 200
    assert call(f"{base_url}/models")[0] == 200


def test_concurrent_requests_are_all_answered(base_url: str, tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    prompts = [f"rev {word}" for word in ("ab", "cde", "fghi", "jk", "lmnop", "qr", "stu", "vwxyz")]
    expected = generate_responses(model, tokenizer, prompts, max_new_tokens=6)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: complete(base_url, prompt=p, max_tokens=6, temperature=0), prompts))
    assert [status for status, _ in results] == [200] * len(prompts)
    assert [body["choices"][0]["text"] for _, body in results] == expected


# ----------------------------------------------------------------------------- host, key, CLI


def test_bind_host_must_be_loopback_unless_allowed() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        check_bind_host(host)
    for host in ("0.0.0.0", "192.168.1.10", "example.org", "::"):
        with pytest.raises(ValueError, match="--allow-remote"):
            check_bind_host(host)
    check_bind_host("0.0.0.0", allow_remote=True)


def test_read_api_key_names_the_variable_never_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDATLAS_TEST_KEY", KEY)
    assert read_api_key("KDATLAS_TEST_KEY") == KEY
    monkeypatch.setenv("KDATLAS_TEST_KEY", " ")
    with pytest.raises(ValueError, match="KDATLAS_TEST_KEY"):
        read_api_key("KDATLAS_TEST_KEY")


runner = CliRunner()


def test_cli_help_lists_the_options() -> None:
    result = runner.invoke(app, ["serve-teacher", "--help"])
    assert result.exit_code == 0
    for option in (
        "--model",
        "--host",
        "--port",
        "--name",
        "--max-new-tokens",
        "--api-key-env",
        "--allow-remote",
    ):
        assert option in result.output


def test_cli_refuses_a_remote_host_without_the_flag() -> None:
    result = runner.invoke(app, ["serve-teacher", "--host", "0.0.0.0", "--dry-run"])
    assert result.exit_code != 0
    assert "0.0.0.0" in result.output and "--allow-remote" in result.output
    allowed = runner.invoke(app, ["serve-teacher", "--host", "0.0.0.0", "--allow-remote", "--dry-run"])
    assert allowed.exit_code == 0 and "would serve" in allowed.output


def test_cli_checks_the_key_variable_and_never_prints_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDATLAS_TEST_KEY", raising=False)
    missing = runner.invoke(app, ["serve-teacher", "--api-key-env", "KDATLAS_TEST_KEY", "--dry-run"])
    assert missing.exit_code != 0 and "KDATLAS_TEST_KEY" in missing.output
    monkeypatch.setenv("KDATLAS_TEST_KEY", KEY)
    ok = runner.invoke(
        app, ["serve-teacher", "--api-key-env", "KDATLAS_TEST_KEY", "--port", "0", "--dry-run"]
    )
    assert ok.exit_code == 0 and KEY not in ok.output and "$KDATLAS_TEST_KEY" in ok.output


def test_cli_serves_the_loaded_model_until_interrupted(
    monkeypatch: pytest.MonkeyPatch, tiny: tuple[Any, Any]
) -> None:
    """The command's serving path, with model loading and ``serve_forever`` patched out."""
    from reference_impls.teachers import server as module

    served: dict[str, Any] = {}

    def fake_serve(self: module.TeacherServer, poll_interval: float = 0.5) -> None:
        served["config"], served["url"] = self.config, self.base_url
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "load_served_model", lambda spec, device, trust: (*tiny, EMBEDDED_NAME))
    monkeypatch.setattr(module.TeacherServer, "serve_forever", fake_serve)
    result = runner.invoke(app, ["serve-teacher", "--port", "0", "--name", "t", "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    assert served["config"].model_name == "t" and served["config"].max_new_tokens == 5
    assert served["url"].startswith("http://127.0.0.1:") and "serving" in result.output
