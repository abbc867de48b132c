"""The ``kdatlas`` command line: browse, validate, cite, run, and build the docs.

Heavy imports (torch, transformers, mkdocs) happen inside the commands that need them, so that
``kdatlas list`` and ``kdatlas validate`` start quickly.

One module per verb group: `browse` (list, show, stats, cite, export, schema), `author` (new,
validate), `run` (run, serve-teacher), `bench` (bench, leaderboard, claims), `teachers` (teachers list,
teachers build) and `docs` (docs build, docs serve); `common` holds what they share. The
commands are registered below, in the order ``kdatlas --help`` lists them.
"""

from __future__ import annotations

import typer

from kdatlas.cli import author, bench, browse, docs, run, teachers

app = typer.Typer(
    help="kdatlas — a survey-as-code knowledge base for knowledge distillation of LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(docs.docs_app, name="docs")
app.add_typer(teachers.teachers_app, name="teachers")

app.command("list")(browse.list_entries)
app.command("show")(browse.show)
app.command("validate")(author.validate)
app.command("cite")(browse.cite)
app.command("run")(run.run)
app.command("schema")(browse.schema)
app.command("export")(browse.export)
app.command("stats")(browse.stats)
app.command("new")(author.new)
app.command("serve-teacher")(run.serve_teacher)
app.command("bench")(bench.bench)
app.command("leaderboard")(bench.leaderboard)
app.command("claims")(bench.claims)


def main() -> None:
    """Console-script entry point."""
    app()
