"""The black-box access path end to end over real HTTP: `serve-teacher` ↔ OpenAI-compatible client
↔ persistent response cache. A rerun is answered from the cache without any HTTP request."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impls.blackbox.cache import ResponseCache
from reference_impls.blackbox.http_teacher import OpenAICompatibleTeacher
from reference_impls.blackbox.requests import GenerationRequest
from reference_impls.blackbox.server import serve_in_thread
from reference_impls.blackbox.teacher import LocalTeacher
from reference_impls.common.models import build_decoder, build_student_config
from reference_impls.common.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def served() -> tuple[str, object, object]:
    tokenizer = build_tokenizer()
    model = build_decoder(build_student_config(tokenizer), 0).eval()
    base_url, stop = serve_in_thread(model, tokenizer, model_name="tiny", max_new_tokens=16)
    yield base_url, model, tokenizer
    stop()


def test_cached_generation_over_http_matches_the_local_model_and_resumes(
    served: tuple, tmp_path: Path
) -> None:
    base_url, model, tokenizer = served
    teacher = OpenAICompatibleTeacher(base_url, "tiny", api_key_env="KDATLAS_TEST_NO_KEY")
    prompts = ["copy: abc", "rev: hello", "sort: dbca", "up: xy"]
    requests = [GenerationRequest(prompt=p, max_new_tokens=8) for p in prompts]
    generate = teacher.generate

    cache = ResponseCache(tmp_path / "responses.jsonl")
    records = cache.generate_cached(
        generate, requests, identity=teacher.identity(), batch_size=2, progress=False
    )
    local = LocalTeacher(model, tokenizer).generate(
        [GenerationRequest(prompt=p, max_new_tokens=8) for p in prompts]
    )
    assert [r.text for r in records] == [c.text for c in local]
    calls = teacher.stats.http_requests
    assert calls == len(prompts)

    again = ResponseCache(tmp_path / "responses.jsonl").generate_cached(
        generate, requests, identity=teacher.identity(), batch_size=2, progress=False
    )
    assert [r.text for r in again] == [r.text for r in records]
    assert teacher.stats.http_requests == calls, "a rerun must be served from the cache"


def test_cached_generate_answers_like_the_teacher_and_caches_each_sample(tmp_path: Path) -> None:
    from reference_impls.blackbox.access import cached_generate

    tokenizer = build_tokenizer()
    teacher = LocalTeacher(build_decoder(build_student_config(tokenizer), 0).eval(), tokenizer)
    calls: list[int] = []
    generate = teacher.generate

    def counting(requests: list[GenerationRequest]) -> list:
        calls.append(len(requests))
        return generate(requests)

    teacher.generate = counting  # type: ignore[method-assign]
    requests = [
        GenerationRequest(prompt="copy: abc", max_new_tokens=8),
        GenerationRequest(prompt="rev: hello", max_new_tokens=8, temperature=1.0, seed=3, n=3),
        GenerationRequest(prompt=({"role": "user", "content": "up: xy"},), max_new_tokens=8),
    ]
    path = tmp_path / "cache.jsonl"
    first = cached_generate(teacher, requests, path, progress=False)
    assert [c.index for c in first] == [0, 0, 1, 2, 0]
    assert first[0].text == generate([requests[0]])[0].text
    # Samples cached one by one are the samples of the n=3 request (seeds seed + i both ways).
    assert [c.text for c in first[1:4]] == [c.text for c in generate([requests[1]])]
    assert sum(calls) == 5
    again = cached_generate(teacher, requests, path, progress=False)
    assert [c.text for c in again] == [c.text for c in first] and sum(calls) == 5
    # Log-probs are part of the key and stored with the text.
    (with_logprobs,) = cached_generate(
        teacher, [GenerationRequest(prompt="x", logprobs=2)], path, progress=False
    )
    assert with_logprobs.logprobs and len(with_logprobs.logprobs[0].top_logprobs) == 2
    (cached,) = cached_generate(teacher, [GenerationRequest(prompt="x", logprobs=2)], path, progress=False)
    assert cached == with_logprobs and sum(calls) == 6
