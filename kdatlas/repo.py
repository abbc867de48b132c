"""Finding the repository whose taxonomy and bibliography a command works on."""

from __future__ import annotations

from pathlib import Path

import kdatlas


class RepositoryNotFound(Exception):
    """No folder with a ``taxonomy/`` directory was found."""


def is_repository(path: Path) -> bool:
    """A kdatlas repository has ``taxonomy/`` and ``bib/`` folders."""
    return (path / "taxonomy").is_dir() and (path / "bib").is_dir()


def find_repository(start: Path | None = None) -> Path:
    """The nearest repository at or above ``start`` (default: the current directory).

    Falls back to the checkout this package was installed from (an editable install), so the
    commands also work from other folders.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if is_repository(candidate):
            return candidate
    source_checkout = Path(kdatlas.__file__).resolve().parents[1]
    if is_repository(source_checkout):
        return source_checkout
    raise RepositoryNotFound(
        f"no kdatlas repository at or above {here} (looked for taxonomy/ and bib/ folders) — "
        "run the command inside a clone of kdatlas or pass its path"
    )
