r"""A persistent cache of teacher responses: each completion is paid for once.

Black-box distillation spends most of its time (and, with an API, its money) generating teacher
text. `ResponseCache` keeps every completion in an append-only JSONL file keyed by what determines
it, so a rerun makes no repeated calls and an interrupted run resumes where it stopped:

```python
cache = ResponseCache("runs/alpaca/teacher.jsonl")
records = cache.generate_cached(backend_generate, requests, identity="openai:http://127.0.0.1:8000/v1:tiny")
```

## Keys

A completion is a function of the teacher and the request, so `cache_key(identity, request)` is
the SHA-256 of the canonical JSON of

    {"v": 1, "teacher": identity,
     "request": {prompt | messages, max_new_tokens, temperature, top_p, seed, sample_index, stop}}

(sorted keys, no spaces, ASCII; an integral float is written as an integer so `temperature=1` and
`temperature=1.0` give one key; NaN and infinity are refused). Every sampling parameter is part of
the key, and so is `sample_index`, which tells apart several samples drawn for one prompt (the
`n` of an API). ``identity`` must name the model *and* where it is served (a local path, a hub id
with its revision, an endpoint URL with its model name). It is written to the file in clear: it
must never contain an API key.

## The file

One JSON object per line, ``{"v": 1, "key": <sha256>, "teacher": ..., "request": ...,
"record": {"text", "finish_reason", "prompt_tokens", "completion_tokens", "logprobs"}}``. What can
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; threads are still serialised.
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1


class CacheWarning(UserWarning):
    """A cache line was skipped (corrupt, incomplete) or the file changed under the cache."""


class TeacherOutputError(ValueError):
    """The teacher's generate function returned something that is not one record per request."""


@dataclass(frozen=True)
class Request:
    """One generation request, as the cache keys it.

    Exactly one of ``prompt`` (plain text) and ``messages`` (chat turns) is set. Backends convert
    it to their own request type field by field.

    Attributes:
        prompt: The prompt text of a completion request.
        messages: Chat turns ``[{"role": "user", "content": "..."}, ...]`` of a chat request.
        max_new_tokens: Upper bound on completion tokens.
        temperature: Sampling temperature (0: greedy).
        top_p: Nucleus-sampling mass, in ``(0, 1]``.
        seed: Sampling seed; ``None`` when the backend picks one (the key still records ``None``).
        sample_index: Which of several samples for the same prompt and seed this is (0, 1, ...).
        stop: Stop strings.
    """

    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    sample_index: int = 0
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a Request needs exactly one of prompt= (text) or messages= (chat turns)")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise TypeError(f"prompt must be a string, got {type(self.prompt).__name__}")
        for turn in self.messages or []:
            if not (isinstance(turn, Mapping) and isinstance(turn.get("role"), str)):
                raise ValueError(f"each chat message needs a string 'role' and 'content', got {turn!r}")
            if not isinstance(turn.get("content"), str):
                raise ValueError(f"each chat message needs a string 'role' and 'content', got {turn!r}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not _is_int(self.sample_index) or self.sample_index < 0:
            raise ValueError(f"sample_index must be an integer >= 0, got {self.sample_index!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError(f"stop must be a list of strings, got {self.stop!r}")

    def to_dict(self) -> dict[str, Any]:
        """The request as plain JSON data (the part of the cache key that describes the request)."""
        return {
            "prompt": self.prompt,
            "messages": None if self.messages is None else [dict(turn) for turn in self.messages],
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "sample_index": self.sample_index,
            "stop": list(self.stop),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Request:
        """Build a request from `to_dict` output (unknown fields are an error: they would change the key)."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown Request fields {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Record:
    """One teacher completion, stored as it came back (empty and cut-off texts included).

    Attributes:
        text: The completion text (``""`` when the teacher returned nothing).
        finish_reason: Why generation stopped, as the backend says (``"stop"``, ``"length"``, ...).
        prompt_tokens: Prompt tokens billed, ``None`` when the backend does not report usage.
        completion_tokens: Completion tokens billed, ``None`` when unknown.
        logprobs: The backend's log-probs (e.g. top-k per token) as JSON data, or ``None``.
    """

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"text must be a string, got {type(self.text).__name__}")
        if self.finish_reason is not None and not isinstance(self.finish_reason, str):
            raise TypeError(f"finish_reason must be a string or None, got {self.finish_reason!r}")
        for name in ("prompt_tokens", "completion_tokens"):
            count = getattr(self, name)
            if count is not None and (not _is_int(count) or count < 0):
                raise ValueError(f"{name} must be an integer >= 0 or None, got {count!r}")
        if self.logprobs is not None:
            try:
                json.dumps(self.logprobs)
            except (TypeError, ValueError) as error:
                raise TypeError(f"logprobs must be JSON data (lists, dicts, numbers): {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON data."""
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "logprobs": self.logprobs,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Build a record from `to_dict` output; unknown fields are ignored (newer writers)."""
        if "text" not in data:
            raise ValueError("a record needs a 'text' field")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    @classmethod
    def coerce(cls, value: object) -> Record:
        """Accept what a backend returns: a `Record`, a mapping, or any object with a ``.text``.

        A missing text (``None``, as in an API's ``"content": null``) becomes ``""``; anything
        else that is not a string is an error.
        """
        if isinstance(value, Record):
            return value
        if isinstance(value, Mapping):
            fields = dict(value)
        elif hasattr(value, "text"):
            fields = {name: getattr(value, name, None) for name in cls.__dataclass_fields__}
        else:
            raise TypeError(
                f"expected a Record, a mapping or an object with a .text attribute, got {type(value).__name__}"
            )
        if fields.get("text") is None:
            fields["text"] = ""
        return cls.from_dict(fields)


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


def cache_key(identity: str, request: Request | Mapping[str, Any]) -> CacheKey:
    """The key of a request to a teacher: SHA-256 of the canonical JSON of both.

    Args:
        identity: Names the teacher model and where it is served; never an API key.
        request: A `Request` or its `Request.to_dict` form.
    """
    if not isinstance(identity, str) or not identity:
        raise ValueError("the teacher identity must be a non-empty string (model and where it is served)")
    if not isinstance(request, Request):
        request = Request.from_dict(request)
    request_json = canonical_json(request.to_dict())
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
TeacherGenerate = Callable[[list[Request]], Sequence[Record]]


class ResponseCache:
    """Teacher completions in an append-only JSONL file, shared by threads and processes.

    Args:
        path: The cache file; it and its folder are created on the first write.

    Attributes:
        path: The cache file.
        problems: Lines skipped while reading the file (also issued as `CacheWarning`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.problems: list[CacheProblem] = []
        self._lock = threading.RLock()
        self._records: dict[str, Record] = {}
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

    def get(self, key: Key) -> Record | None:
        """The cached record for ``key`` (a `CacheKey` or its digest), or ``None``.

        A miss rereads the file's new lines first, so records other processes wrote are found.
        """
        digest = _digest(key)
        with self._lock:
            if digest not in self._records:
                self.refresh()
            return self._records.get(digest)

    def put(self, key: Key, record: object) -> Record:
        """Append one record (fsynced) unless the key is present; first write wins.

        Args:
            key: A `CacheKey` (the line then records teacher and request) or a digest.
            record: A `Record`, or anything `Record.coerce` accepts.

        Returns:
            The record now cached for ``key``: the earlier one when the key was already present.
        """
        return self.put_many([(key, record)])[0]

    def put_many(self, items: Iterable[tuple[Key, object]]) -> list[Record]:
        """Append several records with one lock, one write and one fsync; first write wins.

        Returns:
            The record now cached for each key, in order.
        """
        pairs = [(key, Record.coerce(record)) for key, record in items]
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab+", buffering=0) as handle, _file_lock(handle, exclusive=True):
                if self._read_new(handle):
                    # Writers hold the lock, so bytes after the last newline are a line whose
                    # writer died mid-write: cut them off, or our first line would be glued to them.
                    os.ftruncate(handle.fileno(), self._offset)
                fresh: dict[str, Record] = {}
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
        requests: Sequence[Request],
        *,
        identity: str,
        batch_size: int = 16,
        progress: bool | Progress = True,
        description: str = "teacher generation",
    ) -> list[Record]:
        """One record per request, generating only those not cached yet.

        Missing requests (each distinct key once) go to ``teacher_generate`` in batches, in order;
        each batch's records are appended and fsynced as soon as they come back, so an interrupted
        run loses at most the batch in flight and a rerun resumes after the last cached one.

        Args:
            teacher_generate: Takes a list of requests and returns one record per request, in
                order (`Record`, mapping, or an object with ``.text`` such as a backend's
                completion type).
            requests: The requests, answered in this order.
            identity: The teacher identity that goes into every key (see `cache_key`).
            batch_size: Missing requests per call to ``teacher_generate``.
            progress: Show a progress bar with cached / new / total counts and the tokens spent
                by new generations; pass a `rich.progress.Progress` to add the task to it.
            description: The progress bar's label.

        Returns:
            The cached record of every request (for a key written concurrently by another
            process, the first one written).

        Raises:
            TeacherOutputError: ``teacher_generate`` returned the wrong number of records or a
                malformed one; nothing from that batch is cached, earlier batches stay.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        keys = [cache_key(identity, request) for request in requests]
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


def _encode_line(key: Key, record: Record) -> bytes:
    entry: dict[str, Any] = {"v": FORMAT_VERSION, "key": _digest(key), "record": record.to_dict()}
    if isinstance(key, CacheKey):
        entry["teacher"], entry["request"] = key.teacher, json.loads(key.request)
    # ASCII output: no raw newline can end up inside a line, and lone surrogates survive.
    return (json.dumps(entry, sort_keys=True) + "\n").encode("ascii")


def _decode_line(raw: bytes) -> tuple[str, Record]:
    entry = json.loads(raw)
    if not isinstance(entry, dict):
        raise ValueError("a line must be a JSON object")
    if entry.get("v") != FORMAT_VERSION:
        raise ValueError(f"format version {entry.get('v')!r}, expected {FORMAT_VERSION}")
    digest, record = entry.get("key"), entry.get("record")
    if not (isinstance(digest, str) and len(digest) == 64) or not isinstance(record, dict):
        raise ValueError("a line needs a 64-character 'key' and a 'record' object")
    has_origin = "teacher" in entry or "request" in entry
    if has_origin and cache_key(entry.get("teacher"), entry.get("request") or {}).digest != digest:
        raise ValueError("the key does not match the line's teacher and request (edited by hand?)")
    return digest, Record.from_dict(record)


def _check_outputs(outputs: object, expected: int) -> list[Record]:
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
            records.append(Record.coerce(output))
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
