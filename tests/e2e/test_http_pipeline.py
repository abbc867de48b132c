"""The black-box access path end to end over real HTTP: `serve-teacher` ↔ OpenAI-compatible client
↔ persistent response cache. A rerun is answered from the cache without any HTTP request."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reference_impls.black_box.instruction_following.alpaca import alpaca_recipe
from reference_impls.core.models import build_decoder, build_student_config
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.run import RunConfig, run_recipe
from reference_impls.teachers.http import OpenAICompatibleTeacher
from reference_impls.teachers.instruct import InstructTeacherRecipe, load_or_train_instruct_teacher
from reference_impls.teachers.messages import GenerationRequest
from reference_impls.teachers.response_cache import ResponseCache
from reference_impls.teachers.server import serve_in_thread
from reference_impls.teachers.text import LocalTeacher


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
    from reference_impls.teachers.access import cached_generate

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


# A small instruction teacher (about 20 s to train on 2 cores, cached): good enough to write
# well-formed instructions some of the time, which is all the HTTP equivalence test needs.
SMALL_TEACHER = InstructTeacherRecipe(steps=600, batch_size=32, train_size=19200, layers=2, width=64, ffn=128)


@pytest.fixture(scope="module")
def small_teacher() -> tuple[object, object]:
    return load_or_train_instruct_teacher("cpu", progress=False, recipe=SMALL_TEACHER)


def _outcome(run: Callable[[], object]) -> tuple[str, object]:
    """A run's data and metrics, or the error it raised (a weak teacher may keep nothing)."""
    try:
        result = run()
    except ValueError as error:
        return "error", str(error).split(" (")[0]
    return "ok", (result.data, result.metrics, result.config["pipeline"])


def test_pipeline_runs_unchanged_over_http(small_teacher: tuple, tmp_path: Path) -> None:
    model, tokenizer = small_teacher
    base_url, stop = serve_in_thread(model, tokenizer, model_name="small", max_new_tokens=64)
    try:
        recipe = alpaca_recipe(num_instructions=10)

        def config(cache: str, **endpoint: object) -> RunConfig:
            return RunConfig(
                device="cpu", steps=3, eval_size=16, cache=str(tmp_path / cache), progress=False, **endpoint
            )

        local = _outcome(
            lambda: run_recipe(recipe, config("local.jsonl"), teacher=LocalTeacher(model, tokenizer))
        )
        http = config("http.jsonl", teacher_url=base_url, teacher_model="small", api_key_env=None)
        # The teacher resolved from the URL, as `kdatlas run --teacher-url` does.
        remote = _outcome(lambda: run_recipe(recipe, http))
        # The server generates with the same LocalTeacher code: the same data, the same students
        # (or, for a teacher too weak to pass the filters, the same refusal). Only the teacher's own
        # row differs: an endpoint gives text, not likelihoods, so it has no golden metric or attack.
        if local[0] == "ok" and remote[0] == "ok":
            teacher_local, teacher_remote = local[1][1]["teacher"], remote[1][1]["teacher"]
            assert "oracle_kl" in teacher_local and "oracle_kl" not in teacher_remote
            assert teacher_remote == {k: v for k, v in teacher_local.items() if k in teacher_remote}
            local = ("ok", (local[1][0], {**local[1][1], "teacher": teacher_remote}, local[1][2]))
        assert remote == local
        assert len((tmp_path / "http.jsonl").read_text().splitlines()) > 100  # it did talk to the server
        counting = OpenAICompatibleTeacher(base_url, "small", api_key_env=None)
        again = _outcome(lambda: run_recipe(recipe, http, teacher=counting))
        assert counting.stats.http_requests == 0, "a rerun must be served from the cache"
        assert again == remote
    finally:
        stop()
