r"""A persistent cache of teacher responses: each completion is paid for once.

Black-box distillation spends most of its time (and, with an API, its money) generating teacher
text. `ResponseCache` keeps every completion in an append-only JSONL file keyed by what determines
it, so a rerun makes no repeated calls and an interrupted run resumes where it stopped:

```python
cache = ResponseCache("runs/alpaca/teacher.jsonl")
completions = cache.generate_cached(teacher.generate, requests, identity=teacher.identity())
```

## Keys

A completion is a function of the teacher and the request, so `cache_key(identity, request)` is
the SHA-256 of the canonical JSON of

    {"v": 2, "teacher": identity,
     "request": {prompt, max_new_tokens, temperature, top_p, seed, stop, logprobs, sample_index}}

where ``request`` is a single-sample `GenerationRequest` without its ``n`` (``prompt`` is a string
or a list of ``{"role", "content"}`` messages). (Sorted keys, no spaces, ASCII; an integral float is written as an integer so `temperature=1` and
`temperature=1.0` give one key; NaN and infinity are refused). Every sampling parameter is part of
the key, and so is `sample_index`, which tells apart several samples drawn for one prompt (the
`n` of an API). ``identity`` must name the model *and* where it is served (a local path, a hub id
with its revision, an endpoint URL with its model name). It is written to the file in clear: it
must never contain an API key.

## The file

One JSON object per line, ``{"v": 2, "key": <sha256>, "teacher": ..., "request": ...,
"record": {"text", "finish_reason", "prompt_tokens", "completion_tokens", "logprobs"}}`` (the
record is a `Completion` without its positional ``index``). What can
go wrong, and what the cache does about it:

| event | handling |
|---|---|
| a kill while a line is written | writes are `flush` + `fsync` per batch, so only the line in flight is lost; it has no final newline, is skipped on load with a warning, and cut off (under the lock) before the next append |
| a corrupt line before the last (disk error, hand edit) | reported as ``path:line: reason`` (`CacheWarning`, and in `ResponseCache.problems`), skipped, and left in the file: never silently dropped |
| the same key twice (files concatenated, a writer without locks) | the first line wins |
| threads sharing one cache | a `threading.RLock` |
| processes appending to one file | `fcntl.flock`: exclusive to append, shared to read; before appending, a writer reads what others appended, so a key is never written twice (no cross-process locking where `fcntl` is missing, i.e. Windows) |
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from reference_impls.teachers.messages import Completion, GenerationRequest

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; threads are still serialised.
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 2  # 2: requests are GenerationRequest dicts (with logprobs), records Completion dicts


class CacheWarning(UserWarning):
    """A cache line was skipped (corrupt, incomplete) or the file changed under the cache."""


class TeacherOutputError(ValueError):
    """The teacher's generate function returned something that is not one record per request."""


@dataclass(frozen=True)
class CacheKey:
    """The cache key of one (teacher, request) pair; build it with `cache_key`.

    Attributes:
        digest: SHA-256 (hex) of the canonical JSON of teacher and request.
        teacher: The teacher identity.
        request: The request as canonical JSON (kept so each file line says what it answers).
    """

    digest: str
    teacher: str
    request: str


def canonical_json(value: Any) -> str:
    """Serialise JSON data so that equal data gives equal text.

    Keys are sorted, separators carry no spaces, the output is ASCII, and an integral float is
    written as the integer (``1.0`` and ``1`` agree, ``-0.0`` is ``0``).

    Raises:
        ValueError: On NaN or infinity, which have no canonical JSON form.
        TypeError: On values that are not JSON data.
    """
    return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def request_data(request: GenerationRequest, sample_index: int = 0) -> dict[str, Any]:
    """The part of a cache key that describes one sample of a request: every field of
    `GenerationRequest.to_dict` except ``n`` (a cache entry is one sample), plus ``sample_index``.

    Raises:
        ValueError: ``request.n`` is not 1, or ``sample_index`` is negative.
    """
    if request.n != 1:
        raise ValueError(
            f"a cache entry is one sample: split a request with n={request.n} into n requests with "
            "sample_index 0..n-1 (reference_impls.teachers.access.cached_generate does this)"
        )
    if not isinstance(sample_index, int) or isinstance(sample_index, bool) or sample_index < 0:
        raise ValueError(f"sample_index must be an integer >= 0, got {sample_index!r}")
    data = request.to_dict()
    del data["n"]
    return {**data, "sample_index": sample_index}


def cache_key(
    identity: str, request: GenerationRequest | Mapping[str, Any], sample_index: int = 0
) -> CacheKey:
    """The key of one sample of a request to a teacher: SHA-256 of the canonical JSON of both.

    Args:
        identity: Names the teacher model and where it is served; never an API key.
        request: A single-sample `GenerationRequest`, or its `request_data` form (as stored in
            the file; it carries its own ``sample_index``).
        sample_index: Which of several samples of the same request this is.
    """
    if not isinstance(identity, str) or not identity:
        raise ValueError("the teacher identity must be a non-empty string (model and where it is served)")
    if isinstance(request, GenerationRequest):
        data = request_data(request, sample_index)
    else:
        data = dict(request)
        index = data.pop("sample_index", 0)
        data = request_data(GenerationRequest.from_dict({**data, "n": 1}), index)
    request_json = canonical_json(data)
    material = f'{{"request":{request_json},"teacher":{json.dumps(identity)},"v":{FORMAT_VERSION}}}'
    return CacheKey(hashlib.sha256(material.encode("ascii")).hexdigest(), identity, request_json)


@dataclass(frozen=True)
class CacheProblem:
    """A line of the cache file that was skipped on load.

    Attributes:
        line: The 1-based line number in the file.
        reason: What is wrong with it.
    """

    line: int
    reason: str


Key = CacheKey | str
TeacherGenerate = Callable[[list[GenerationRequest]], Sequence[object]]


class ResponseCache:
    """Teacher completions in an append-only JSONL file, shared by threads and processes.

    Args:
        path: The cache file; it and its folder are created on the first write.

    Attributes:
        path: The cache file.
        problems: Lines skipped while reading the file (also issued as `CacheWarning`).
        older_format_lines: Lines of an older format version, ignored (one warning per file).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.problems: list[CacheProblem] = []
        self.older_format_lines = 0
        self._lock = threading.RLock()
        self._records: dict[str, Completion] = {}
        self._offset = 0  # bytes of the file read so far: always the end of a complete line
        self._lines = 0  # complete lines read so far
        self._file_id: tuple[int, int] | None = None
        self._warned_tail_at: int | None = None
        self.refresh()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r}, records={len(self._records)})"

    def __len__(self) -> int:
        self.refresh()
        with self._lock:
            return len(self._records)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (CacheKey, str)) and self.get(key) is not None

    def get(self, key: Key) -> Completion | None:
        """The cached completion for ``key`` (a `CacheKey` or its digest), or ``None``.

        A miss rereads the file's new lines first, so records other processes wrote are found.
        """
        digest = _digest(key)
        with self._lock:
            if digest not in self._records:
                self.refresh()
            return self._records.get(digest)

    def put(self, key: Key, record: object) -> Completion:
        """Append one completion (fsynced) unless the key is present; first write wins.

        Args:
            key: A `CacheKey` (the line then records teacher and request) or a digest.
            record: A `Completion`, or anything `Completion.coerce` accepts.

        Returns:
            The record now cached for ``key``: the earlier one when the key was already present.
        """
        return self.put_many([(key, record)])[0]

    def put_many(self, items: Iterable[tuple[Key, object]]) -> list[Completion]:
        """Append several records with one lock, one write and one fsync; first write wins.

        Returns:
            The record now cached for each key, in order.
        """
        # The sample index is positional, not part of what is stored.
        pairs = [(key, replace(Completion.coerce(record), index=0)) for key, record in items]
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab+", buffering=0) as handle, _file_lock(handle, exclusive=True):
                if self._read_new(handle):
                    # Writers hold the lock, so bytes after the last newline are a line whose
                    # writer died mid-write: cut them off, or our first line would be glued to them.
                    os.ftruncate(handle.fileno(), self._offset)
                fresh: dict[str, Completion] = {}
                lines: list[bytes] = []
                for key, record in pairs:
                    digest = _digest(key)
                    if digest not in self._records and digest not in fresh:
                        fresh[digest] = record
                        lines.append(_encode_line(key, record))
                if lines:
                    payload = b"".join(lines)
                    _write_all(handle, payload)
                    os.fsync(handle.fileno())
                    if self._offset == 0:  # a new file: make its directory entry durable too
                        _fsync_directory(self.path.parent)
                    self._records.update(fresh)
                    self._offset += len(payload)
                    self._lines += len(lines)
            return [self._records[_digest(key)] for key, _ in pairs]

    def refresh(self) -> None:
        """Read the lines appended to the file since the last read (by any process)."""
        with self._lock:
            try:
                handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed just below
            except FileNotFoundError:
                if self._file_id is not None:
                    warnings.warn(f"{self.path}: the cache file was deleted; starting empty", CacheWarning, 2)
                    self._reset()
                return
            with handle, _file_lock(handle, exclusive=False):
                self._read_new(handle)

    def generate_cached(
        self,
        teacher_generate: TeacherGenerate,
        requests: Sequence[GenerationRequest],
        *,
        identity: str,
        sample_indices: Sequence[int] | None = None,
        batch_size: int = 16,
        progress: bool | Progress = True,
        description: str = "teacher generation",
    ) -> list[Completion]:
        """One completion per request, generating only those not cached yet.

        Missing requests (each distinct key once) go to ``teacher_generate`` in batches, in order;
        each batch's completions are appended and fsynced as soon as they come back, so an
        interrupted run loses at most the batch in flight and a rerun resumes after the last
        cached one.

        Args:
            teacher_generate: Takes a list of single-sample requests and returns one completion
                per request, in order (`Completion`, a mapping, or an object with ``.text``).
            requests: Single-sample (``n == 1``) requests, answered in this order.
            identity: The teacher identity that goes into every key (see `cache_key`).
            sample_indices: The sample index of each request (default: all 0); tells apart
                several samples of one request.
            batch_size: Missing requests per call to ``teacher_generate``.
            progress: Show a progress bar with cached / new / total counts and the tokens spent
                by new generations; pass a `rich.progress.Progress` to add the task to it.
            description: The progress bar's label.

        Returns:
            The cached completion of every request (for a key written concurrently by another
            process, the first one written), with ``index`` 0.

        Raises:
            TeacherOutputError: ``teacher_generate`` returned the wrong number of completions or
                a malformed one; nothing from that batch is cached, earlier batches stay.
            ValueError: A request with ``n != 1``, or ``sample_indices`` of the wrong length.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        indices = [0] * len(requests) if sample_indices is None else list(sample_indices)
        if len(indices) != len(requests):
            raise ValueError(f"{len(indices)} sample indices for {len(requests)} requests")
        keys = [cache_key(identity, request, index) for request, index in zip(requests, indices, strict=True)]
        self.refresh()
        positions: dict[str, list[int]] = {}  # missing digest -> where it occurs in `requests`
        with self._lock:
            for index, key in enumerate(keys):
                if key.digest not in self._records:
                    positions.setdefault(key.digest, []).append(index)
        missing = list(positions)
        cached = len(requests) - sum(len(where) for where in positions.values())

        bar, context = _progress_bar(progress)
        with context:
            task = bar.add_task(
                description, total=len(requests), cached=cached, new=0, prompt_tokens=0, completion_tokens=0
            )
            bar.update(task, completed=cached)
            new = prompt_tokens = completion_tokens = 0
            for start in range(0, len(missing), batch_size):
                digests = missing[start : start + batch_size]
                batch = [requests[positions[digest][0]] for digest in digests]
                records = _check_outputs(teacher_generate(batch), len(batch))
                self.put_many([(keys[positions[d][0]], r) for d, r in zip(digests, records, strict=True)])
                answered = sum(len(positions[digest]) for digest in digests)
                new += answered
                prompt_tokens += sum(r.prompt_tokens or 0 for r in records)
                completion_tokens += sum(r.completion_tokens or 0 for r in records)
                bar.update(
                    task,
                    advance=answered,
                    new=new,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                )
        with self._lock:
            return [self._records[key.digest] for key in keys]

    # -- reading the file ------------------------------------------------------------------------

    def _reset(self) -> None:
        self._records.clear()
        self._offset = self._lines = 0
        self._file_id = self._warned_tail_at = None

    def _read_new(self, handle: IO[bytes]) -> int:
        """Parse the complete lines after ``self._offset``; returns the bytes of an incomplete tail."""
        stat = os.fstat(handle.fileno())
        file_id = (stat.st_dev, stat.st_ino)
        if file_id != self._file_id or stat.st_size < self._offset:
            if self._file_id is not None:
                warnings.warn(
                    f"{self.path}: the cache file was replaced or shrunk; reloading", CacheWarning, 3
                )
            self._reset()
            self._file_id = file_id
        handle.seek(self._offset)
        data = _read_exactly(handle, stat.st_size - self._offset)
        complete = data.rfind(b"\n") + 1
        for raw in data[:complete].split(b"\n")[:-1]:
            self._lines += 1
            self._add_line(raw, self._lines)
        self._offset += complete
        tail = len(data) - complete
        if tail and self._warned_tail_at != self._offset:
            self._warned_tail_at = self._offset
            self._report(
                self._lines + 1,
                f"incomplete last line ({tail} bytes), probably a write cut off by a kill; "
                "skipped, and removed before the next append",
            )
        return tail

    def _add_line(self, raw: bytes, number: int) -> None:
        if not raw.strip():
            return
        try:
            digest, record = _decode_line(raw)
        except _OlderFormat:
            # Not an error: the entry was written by an older kdatlas. It is ignored (the request
            # is asked again) and reported once per file, not once per line.
            self.older_format_lines += 1
            if self.older_format_lines == 1:
                warnings.warn(
                    f"{self.path}: lines written by an older cache format are ignored (they will be "
                    "regenerated); delete the file to drop them",
                    CacheWarning,
                    stacklevel=4,
                )
            return
        except (ValueError, TypeError) as error:  # JSON and Unicode decode errors are ValueErrors
            self._report(number, f"not a valid cache record ({error}); skipped")
            return
        # Two lines with one key only appear without locking (or with concatenated files).
        self._records.setdefault(digest, record)

    def _report(self, line: int, reason: str) -> None:
        self.problems.append(CacheProblem(line, reason))
        warnings.warn(f"{self.path}:{line}: {reason}", CacheWarning, stacklevel=4)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _normalise(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no canonical JSON form: use a finite number")
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"JSON object keys must be strings, got {list(value)!r}")
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON data")


def _digest(key: Key) -> str:
    return key.digest if isinstance(key, CacheKey) else key


def _encode_line(key: Key, record: Completion) -> bytes:
    stored = record.to_dict()
    del stored["index"]  # positional, not part of the answer
    entry: dict[str, Any] = {"v": FORMAT_VERSION, "key": _digest(key), "record": stored}
    if isinstance(key, CacheKey):
        entry["teacher"], entry["request"] = key.teacher, json.loads(key.request)
    # ASCII output: no raw newline can end up inside a line, and lone surrogates survive.
    return (json.dumps(entry, sort_keys=True) + "\n").encode("ascii")


def _decode_line(raw: bytes) -> tuple[str, Completion]:
    entry = json.loads(raw)
    if not isinstance(entry, dict):
        raise ValueError("a line must be a JSON object")
    if entry.get("v") != FORMAT_VERSION:
        if isinstance(entry.get("v"), int) and entry["v"] < FORMAT_VERSION:
            raise _OlderFormat
        raise ValueError(f"format version {entry.get('v')!r}, expected {FORMAT_VERSION}")
    digest, record = entry.get("key"), entry.get("record")
    if not (isinstance(digest, str) and len(digest) == 64) or not isinstance(record, dict):
        raise ValueError("a line needs a 64-character 'key' and a 'record' object")
    has_origin = "teacher" in entry or "request" in entry
    if has_origin and cache_key(entry.get("teacher"), entry.get("request") or {}).digest != digest:
        raise ValueError("the key does not match the line's teacher and request (edited by hand?)")
    return digest, Completion.from_dict(record)


class _OlderFormat(Exception):
    """A line written by an older version of the cache: ignored (its key would differ now)."""


def _check_outputs(outputs: object, expected: int) -> list[Completion]:
    if isinstance(outputs, (str, bytes, Mapping)) or not isinstance(outputs, Iterable):
        raise TeacherOutputError(
            f"teacher_generate returned a {type(outputs).__name__}; it must return a list with one "
            "record per request (nothing from this batch was cached)"
        )
    outputs = list(outputs)
    if len(outputs) != expected:
        raise TeacherOutputError(
            f"teacher_generate returned {len(outputs)} records for {expected} requests; it must "
            "return exactly one per request, in order (nothing from this batch was cached)"
        )
    records = []
    for index, output in enumerate(outputs):
        try:
            records.append(Completion.coerce(output))
        except (TypeError, ValueError) as error:
            raise TeacherOutputError(
                f"record {index} of the batch is malformed: {error} (nothing from this batch was cached)"
            ) from error
    return records


@contextlib.contextmanager
def _file_lock(handle: IO[bytes], *, exclusive: bool) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_exactly(handle: IO[bytes], size: int) -> bytes:
    chunks, remaining = [], size
    while remaining > 0:
        chunk = handle.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _write_all(handle: IO[bytes], payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        written = handle.write(view)
        view = view[written or 0 :]


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(descriptor)


def _progress_bar(progress: bool | Progress) -> tuple[Progress, contextlib.AbstractContextManager[Any]]:
    """A bar to add a task to, and the context that starts and stops it (not a caller's own)."""
    if isinstance(progress, Progress):
        return progress, contextlib.nullcontext()
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cached {task.fields[cached]} · new {task.fields[new]}"),
        TextColumn("tokens {task.fields[prompt_tokens]:,} in + {task.fields[completion_tokens]:,} out"),
        TimeElapsedColumn(),
    ]
    bar = Progress(*columns, disable=not progress, transient=False)
    return bar, bar
