"""The user's cache directory, stable digests and atomic writes: one way to do each.

Embedded teachers, cached baselines and teacher metrics, top-k teacher signals and the black-box
response cache all live under `cache_root`; every cache key is a `digest` of what determines the
cached value, and every cached file is written so that a reader never sees half of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """``$KDATLAS_CACHE`` if set, else ``~/.cache/kdatlas``."""
    return Path(os.environ.get("KDATLAS_CACHE") or Path.home() / ".cache" / "kdatlas")


def digest(payload: Any) -> str:
    """16 hex characters of the SHA-256 of ``payload`` as canonical JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(name: str) -> str:
    """Identity of a model/data reference: a local path's files (names, sizes, mtimes), else the id."""
    path = Path(name)
    if not path.exists():
        return name  # a hub id
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def source_digest(*folders: Path) -> str:
    """Hash of the ``.py`` files of ``folders``: cached results of older code are never reused."""
    sources = sorted(path for folder in folders for path in folder.glob("*.py"))
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is missing or unreadable (a cache miss)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A sibling file to write ``path``'s new content into: it replaces ``path`` in one rename when
    the block succeeds and is removed when it fails, so a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def write_json_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    """``payload`` as indented JSON in ``path``, written through `staged`."""
    with staged(path) as staging:
        staging.write_text(json.dumps(payload, indent=2))
