"""The teacher-response cache: keys, durability, resume, concurrency, bad teacher output, progress."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from reference_impls.teachers.messages import Completion, GenerationRequest, TokenLogprob
from reference_impls.teachers.response_cache import (
    CacheKey,
    CacheWarning,
    ResponseCache,
    TeacherOutputError,
    cache_key,
    canonical_json,
    request_data,
)

TEACHER = "local:tiny-teacher@test"


def echo(requests: Sequence[GenerationRequest]) -> list[Completion]:
    """A deterministic stand-in teacher: the answer is the prompt reversed."""
    return [Completion(r.prompt[::-1], "stop", len(r.prompt), len(r.prompt)) for r in requests]


class CountingTeacher:
    """Counts calls and requests; raises after ``fail_after`` calls (an interrupted run)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.seen: list[str] = []
        self.fail_after = fail_after

    def __call__(self, requests: list[GenerationRequest]) -> list[Completion]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("connection lost")
        self.calls += 1
        self.seen.extend(r.prompt for r in requests)
        return echo(requests)


def prompts(n: int) -> list[GenerationRequest]:
    return [GenerationRequest(f"prompt {i}", max_new_tokens=8) for i in range(n)]


def file_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def test_round_trip_survives_reload(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.jsonl"
    cache = ResponseCache(path)
    key = cache_key(
        TEACHER, GenerationRequest([{"role": "user", "content": "hi\nthere é \u2028"}], logprobs=1)
    )
    record = Completion("réponse\n", "length", 3, 8, logprobs=[TokenLogprob("a", -0.5, (("a", -0.5),))])
    assert key not in cache and cache.get(key) is None
    assert cache.put(key, record) == record
    assert key in cache and key.digest in cache and len(cache) == 1
    again = ResponseCache(path)
    assert again.get(key) == record and again.problems == []
    line = file_lines(path)[0]
    assert line["teacher"] == TEACHER and line["request"]["prompt"][0]["role"] == "user"


def test_keys_differ_by_every_sampling_parameter_and_teacher() -> None:
    def request(**changes: object) -> GenerationRequest:
        fields = {"prompt": "p", "max_new_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 1, **changes}
        return GenerationRequest(**fields)

    variants = [
        (request(), 0),
        (request(prompt="q"), 0),
        (request(prompt=[{"role": "user", "content": "p"}]), 0),
        (request(max_new_tokens=9), 0),
        (request(temperature=0.8), 0),
        (request(top_p=0.95), 0),
        (request(seed=2), 0),
        (request(seed=None), 0),
        (request(), 1),  # another sample of the same request
        (request(stop=["\n"]), 0),
        (request(logprobs=2), 0),
    ]
    digests = [cache_key(TEACHER, r, index).digest for r, index in variants]
    digests.append(cache_key("local:other-teacher", request()).digest)
    assert len(set(digests)) == len(digests)


def test_keys_are_canonical() -> None:
    one = cache_key(TEACHER, GenerationRequest("p", temperature=1, top_p=1))
    assert one == cache_key(TEACHER, GenerationRequest("p", temperature=1.0, top_p=1.0))
    stored = request_data(GenerationRequest("p", temperature=1.0))
    assert one == cache_key(TEACHER, stored) and stored["sample_index"] == 0 and "n" not in stored
    chat = [{"role": "user", "content": "x"}]
    assert cache_key(TEACHER, GenerationRequest(chat)) == cache_key(
        TEACHER, GenerationRequest([{"content": "x", "role": "user"}])
    )
    assert canonical_json({"b": -0.0, "a": [1.0, 0.25]}) == '{"a":[1,0.25],"b":0}'
    with pytest.raises(ValueError, match="finite"):
        canonical_json({"t": float("nan")})
    with pytest.raises(ValueError, match="one sample"):
        cache_key(TEACHER, GenerationRequest("p", n=2))
    with pytest.raises(ValueError, match="non-empty"):
        cache_key("", GenerationRequest("p"))


def test_generate_cached_rerun_makes_no_calls(tmp_path: Path) -> None:
    requests = prompts(10)
    teacher = CountingTeacher()
    cache = ResponseCache(tmp_path / "c.jsonl")
    first = cache.generate_cached(teacher, requests, identity=TEACHER, batch_size=3, progress=False)
    assert [r.text for r in first] == [r.prompt[::-1] for r in requests]
    assert teacher.calls == 4
    again = ResponseCache(tmp_path / "c.jsonl").generate_cached(
        teacher, requests, identity=TEACHER, batch_size=3, progress=False
    )
    assert again == first and teacher.calls == 4
    # Another teacher identity is another cache entry.
    ResponseCache(tmp_path / "c.jsonl").generate_cached(
        teacher, requests[:2], identity="local:other", batch_size=3, progress=False
    )
    assert teacher.calls == 5


def test_resume_after_interruption(tmp_path: Path) -> None:
    requests = prompts(10)
    broken = CountingTeacher(fail_after=2)
    with pytest.raises(RuntimeError, match="connection lost"):
        ResponseCache(tmp_path / "c.jsonl").generate_cached(
            broken, requests, identity=TEACHER, batch_size=3, progress=False
        )
    assert broken.calls == 2 and len(ResponseCache(tmp_path / "c.jsonl")) == 6
    resumed = CountingTeacher()
    records = ResponseCache(tmp_path / "c.jsonl").generate_cached(
        resumed, requests, identity=TEACHER, batch_size=3, progress=False
    )
    assert resumed.calls == 2  # the 4 missing requests: a batch of 3 and a batch of 1
    assert broken.seen + resumed.seen == [r.prompt for r in requests]  # each generated exactly once
    assert [r.text for r in records] == [r.prompt[::-1] for r in requests]
    assert len(file_lines(tmp_path / "c.jsonl")) == 10


def test_repeated_requests_are_generated_once(tmp_path: Path) -> None:
    requests = prompts(3) + prompts(3)
    teacher = CountingTeacher()
    records = ResponseCache(tmp_path / "c.jsonl").generate_cached(
        teacher, requests, identity=TEACHER, batch_size=8, progress=False
    )
    assert teacher.seen == ["prompt 0", "prompt 1", "prompt 2"] and records[:3] == records[3:]


def test_kill_mid_write_loses_only_the_line_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    cache = ResponseCache(path)
    cache.generate_cached(echo, prompts(3), identity=TEACHER, batch_size=2, progress=False)
    with path.open("ab") as handle:  # what a writer killed mid-line leaves behind
        handle.write(b'{"key": "3f2a", "record": {"text": "hal')
    with pytest.warns(CacheWarning, match=r"c\.jsonl:4: incomplete last line"):
        reloaded = ResponseCache(path)
    assert len(reloaded) == 3 and [p.line for p in reloaded.problems] == [4]
    new_key = cache_key(TEACHER, GenerationRequest("after the crash"))
    reloaded.put(new_key, Completion("ok"))
    assert len(file_lines(path)) == 4  # every line parses: the fragment was cut off
    clean = ResponseCache(path)
    assert clean.problems == [] and len(clean) == 4 and clean.get(new_key) == Completion("ok")


def test_corrupt_middle_line_is_reported_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    ResponseCache(path).generate_cached(echo, prompts(3), identity=TEACHER, batch_size=3, progress=False)
    lines = path.read_bytes().split(b"\n")
    tampered = json.loads(lines[2])
    tampered["record"]["text"] = "x"
    tampered["request"]["prompt"] = "edited"  # no longer matches its key
    lines[1] = b"\x00\x00garbage"
    lines[2] = json.dumps(tampered).encode()
    path.write_bytes(b"\n".join(lines))
    with pytest.warns(CacheWarning) as caught:
        cache = ResponseCache(path)
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 2 and "c.jsonl:2: not a valid cache record" in messages[0]
    assert "c.jsonl:3: not a valid cache record" in messages[1] and "does not match" in messages[1]
    assert [p.line for p in cache.problems] == [2, 3]
    assert len(cache) == 1
    # Regenerating fills the gaps; the bad lines stay in the file for inspection.
    cache.generate_cached(echo, prompts(3), identity=TEACHER, batch_size=3, progress=False)
    assert b"garbage" in path.read_bytes() and len(path.read_bytes().split(b"\n")) == 6


def test_duplicate_keys_keep_the_first(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    key = cache_key(TEACHER, GenerationRequest("p"))
    cache = ResponseCache(path)
    assert cache.put(key, Completion("first")) == Completion("first")
    assert cache.put(key, Completion("second")) == Completion("first")  # first write wins, nothing appended
    assert len(file_lines(path)) == 1
    duplicate = path.read_bytes().replace(b"first", b"later")
    with path.open("ab") as handle:  # a duplicate written by a writer without the lock
        handle.write(duplicate)
    assert ResponseCache(path).get(key) == Completion("first")


def test_two_threads_append_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    shared = ResponseCache(path)
    requests = prompts(40)
    calls: list[int] = []

    def worker(cache: ResponseCache, order: list[GenerationRequest]) -> None:
        def teacher(batch: list[GenerationRequest]) -> list[Completion]:
            calls.append(len(batch))
            time.sleep(0.001)
            return echo(batch)

        cache.generate_cached(teacher, order, identity=TEACHER, batch_size=4, progress=False)

    threads = [
        threading.Thread(target=worker, args=(shared, requests)),
        threading.Thread(target=worker, args=(shared, requests[::-1])),
        threading.Thread(target=worker, args=(ResponseCache(path), requests)),  # its own file handle
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = [line["key"] for line in file_lines(path)]
    assert len(keys) == len(set(keys)) == 40
    assert ResponseCache(path).problems == []


def _process_worker(path: str, start: int, barrier: object) -> None:
    """Put 150 overlapping keys one by one (each its own locked, fsynced append)."""
    cache = ResponseCache(path)
    barrier.wait()  # both processes write at the same time
    for i in range(start, start + 150):
        cache.put(cache_key(TEACHER, GenerationRequest(f"p{i}")), Completion(f"from {start}"))


def test_two_processes_append_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_process_worker, args=(str(path), start, barrier)) for start in (0, 50)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    keys = [line["key"] for line in file_lines(path)]
    assert len(keys) == len(set(keys)) == 200
    cache = ResponseCache(path)
    assert cache.problems == [] and len(cache) == 200
    writers = {cache.get(cache_key(TEACHER, GenerationRequest(f"p{i}"))).text for i in range(50, 150)}
    assert writers <= {"from 0", "from 50"}


_KILLED_WRITER = """
import sys
from reference_impls.teachers.response_cache import ResponseCache, cache_key
from reference_impls.teachers.messages import Completion, GenerationRequest
cache = ResponseCache(sys.argv[1])
i = 0
while True:
    cache.put(cache_key("t", GenerationRequest(f"p{i}")), Completion("x" * 5000))
    i += 1
"""


def test_real_kill_leaves_a_loadable_cache(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    root = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=root)
    deadline = time.monotonic() + 20
    while (not path.exists() or path.stat().st_size < 200_000) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)  # the tail, when the kill hit mid-line
        cache = ResponseCache(path)
    assert all(p.reason.startswith("incomplete last line") for p in cache.problems)  # at most the tail
    survivors = len(cache)
    assert survivors >= 30
    cache.put(cache_key("t", GenerationRequest("after")), Completion("y"))
    assert len(file_lines(path)) == survivors + 1 and ResponseCache(path).problems == []


def test_empty_and_truncated_output_is_stored_as_it_came(tmp_path: Path) -> None:
    class OtherCompletion:  # another backend's completion type: duck-typed on .text
        def __init__(self, text: str | None, finish_reason: str) -> None:
            self.text, self.finish_reason = text, finish_reason
            self.prompt_tokens, self.completion_tokens = 2, 0

    def teacher(batch: list[GenerationRequest]) -> list[object]:
        return [
            OtherCompletion("", "stop"),
            {"text": "cut off mid-sen", "finish_reason": "length", "completion_tokens": 8},
            {"text": None, "finish_reason": "content_filter"},
        ][: len(batch)]

    records = ResponseCache(tmp_path / "c.jsonl").generate_cached(
        teacher, prompts(3), identity=TEACHER, batch_size=3, progress=False
    )
    assert records == [
        Completion("", "stop", 2, 0),
        Completion("cut off mid-sen", "length", None, 8),
        Completion("", "content_filter"),
    ]
    assert (
        ResponseCache(tmp_path / "c.jsonl").generate_cached(
            CountingTeacher(fail_after=0), prompts(3), identity=TEACHER, progress=False
        )
        == records
    )


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (lambda batch: echo(batch)[:-1], "returned 2 records for 3 requests"),
        (lambda batch: [*echo(batch), Completion("extra")], "returned 4 records for 3 requests"),
        (lambda batch: "one string", "returned a str"),
        (lambda batch: None, "returned a NoneType"),
        (lambda batch: [Completion("a"), 42, Completion("c")], "record 1 of the batch is malformed"),
        (lambda batch: [Completion("a"), {"text": 7}, Completion("c")], "record 1 of the batch is malformed"),
        (
            lambda batch: [Completion("a"), {"text": "b", "prompt_tokens": -1}, Completion("c")],
            "prompt_tokens",
        ),
    ],
)
def test_malformed_generator_output_raises_and_writes_nothing(tmp_path: Path, output, message: str) -> None:
    path = tmp_path / "c.jsonl"
    cache = ResponseCache(path)
    cache.generate_cached(echo, prompts(3), identity=TEACHER, batch_size=3, progress=False)
    before = path.read_bytes()
    with pytest.raises(TeacherOutputError, match=message):
        cache.generate_cached(output, prompts(6), identity=TEACHER, batch_size=3, progress=False)
    assert path.read_bytes() == before and len(cache) == 3


def test_progress_bar_counts_and_tokens(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.jsonl")
    cache.generate_cached(echo, prompts(4), identity=TEACHER, batch_size=2, progress=False)
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    with Progress(console=console) as bar:
        cache.generate_cached(
            echo, prompts(10), identity=TEACHER, batch_size=4, progress=bar, description="gen"
        )
    task = bar.tasks[0]
    assert (task.description, task.completed, task.total) == ("gen", 10, 10)
    assert task.fields["cached"] == 4 and task.fields["new"] == 6
    # echo bills len(prompt) tokens each way; prompts 4..9 are "prompt N": 8 characters.
    assert task.fields["prompt_tokens"] == task.fields["completion_tokens"] == 6 * 8
    # The built-in bar renders the counts and the token estimate.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rich.progress.Progress.__init__", _recording_init(console))
        cache.generate_cached(echo, prompts(12), identity=TEACHER, batch_size=4)
    text = console.file.getvalue()
    assert "12/12" in text and "cached 10 · new 2" in text and "tokens 18 in + 18 out" in text


def _recording_init(console: Console):
    original = Progress.__init__

    def init(self: Progress, *columns, **kwargs) -> None:
        original(self, *columns, **{**kwargs, "console": console})

    return init


def test_cache_key_objects_and_digests_are_interchangeable(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.jsonl")
    key = cache_key(TEACHER, GenerationRequest("p"))
    assert isinstance(key, CacheKey) and len(key.digest) == 64
    cache.put(key.digest, Completion("by digest"))
    assert cache.get(key) == Completion("by digest") and "teacher" not in file_lines(tmp_path / "c.jsonl")[0]
    assert 3 not in cache
