"""What every command shares: the two consoles, the ``--root`` option and the error exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kdatlas.repo import RepositoryNotFound, find_repository

console = Console()
errors = Console(stderr=True)

RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="Repository folder (default: the one containing the current directory)."),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit to raise (code 2: a usage error)."""
    errors.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def find_root(root: Path | None) -> Path:
    """The repository at or above ``root`` (default: the current directory), or a clean exit."""
    try:
        return find_repository(root)
    except RepositoryNotFound as error:
        raise fail(str(error)) from None
