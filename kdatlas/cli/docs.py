"""``kdatlas docs build`` and ``kdatlas docs serve``: mkdocs, run in a subprocess on ``mkdocs.yml``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from kdatlas.cli.common import RootOption, find_root

docs_app = typer.Typer(help="Build or serve the documentation site.", no_args_is_help=True)


def _mkdocs(root: Path, *args: str) -> int:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    command = [sys.executable, "-m", "mkdocs", *args, "--config-file", str(root / "mkdocs.yml")]
    try:
        return subprocess.call(command, cwd=root, env=env)
    except KeyboardInterrupt:
        return 130


@docs_app.command("build")
def docs_build(
    site_dir: Annotated[Path | None, typer.Option(help="Output folder (default: site/).")] = None,
    root: RootOption = None,
) -> None:
    """Build the site in strict mode (every warning is an error)."""
    repository = find_root(root)
    extra = ["--site-dir", str(site_dir.resolve())] if site_dir else []
    code = _mkdocs(repository, "build", "--strict", *extra)
    if code:
        raise typer.Exit(code)


@docs_app.command("serve")
def docs_serve(
    address: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1:8000",
    root: RootOption = None,
) -> None:
    """Serve the site locally with live reload."""
    raise typer.Exit(_mkdocs(find_root(root), "serve", "--dev-addr", address))
