"""Writing entries: ``new`` scaffolds one, ``validate`` checks the whole repository."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kdatlas.cli.common import RootOption, errors, fail, find_root


def validate(
    path: Annotated[
        Path | None, typer.Argument(help="Repository to check (default: the current one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
) -> None:
    """Check the taxonomy and bibliography: every problem, one pass, as file:line: problem — fix."""
    from kdatlas.validate import validate_repository

    root = find_root(path)
    report = validate_repository(root)
    if as_json:
        typer.echo(
            json.dumps({"ok": report.ok, "problems": [p.as_dict(root) for p in report.problems]}, indent=2)
        )
    else:
        for problem in report.problems:
            typer.echo(problem.format(root))
        counts = f"{len(report.taxonomy.entries)} entries, {len(report.taxonomy.branches)} branches, {len(report.bibliography.entries)} references"
        if report.ok:
            errors.print(f"[green]ok[/] — {counts}, no problems")
        else:
            errors.print(f"[red]{len(report.problems)} problem(s)[/] in {counts}")
    if not report.ok:
        raise typer.Exit(1)


class NewKind(str, Enum):
    method = "method"
    objective = "objective"
    evaluation = "evaluation"
    application = "application"
    direction = "direction"


class NewShape(str, Enum):
    logits = "logits"
    step = "step"
    feature = "feature"
    pipeline = "pipeline"


def new(
    kind: Annotated[NewKind, typer.Argument(help="What the entry describes.")],
    entry_id: Annotated[
        str, typer.Argument(metavar="ID", help="Kebab-case id, e.g. my-method (the file name).")
    ],
    branch: Annotated[str, typer.Option(help="Branch path, e.g. white-box/logits (see 'kdatlas list').")],
    title: Annotated[str, typer.Option(help="Display name, e.g. 'MyKD (my method)'.")],
    arxiv: Annotated[str | None, typer.Option(help="arXiv id of the paper, e.g. 2306.08543.")] = None,
    year: Annotated[int | None, typer.Option(help="Publication year (default: this year).")] = None,
    implementation: Annotated[
        bool,
        typer.Option(help="Also scaffold reference_impls/<id>.py and its test (methods and objectives)."),
    ] = True,
    shape: Annotated[
        NewShape | None,
        typer.Option(
            help="The implementation's skeleton (docs/extend.md). White-box branches: logits (an objective "
            "on aligned logits), step (a StepLoss on both models and the batch), feature (hidden states "
            "through a trained projector). Black-box branches: pipeline (a text pipeline over the "
            "teacher's answers). Default: logits on white-box, pipeline on black-box."
        ),
    ] = None,
    root: RootOption = None,
) -> None:
    """Scaffold a new entry (YAML, BibTeX stub, implementation and test), then list what to fill in."""
    from kdatlas.model import Kind
    from kdatlas.scaffold import ScaffoldError, new_entry
    from kdatlas.validate import validate_repository

    repository = find_root(root)
    try:
        made = new_entry(
            repository, Kind(kind.value), entry_id, branch, title, arxiv, year, implementation,
            shape.value if shape else None,
        )
    except ScaffoldError as error:
        raise fail(str(error)) from None
    for path in made.written:
        verb = "appended a BibTeX stub to" if path == made.bib_file else "wrote"
        errors.print(f"{verb} {path.relative_to(repository)}")
    report = validate_repository(repository)
    todo = [p for p in report.problems if p.path.resolve() in {w.resolve() for w in made.written}]
    others = len(report.problems) - len(todo)
    errors.print(f"\n[bold]Fill in {len(todo)} placeholder(s)[/] (kdatlas validate lists the ones left):")
    for problem in todo:
        errors.print("  " + problem.format(repository), soft_wrap=True, highlight=False)
    if others:
        errors.print(f"[yellow]{others} other problem(s) in the repository: run 'kdatlas validate'.[/]")
    steps = [
        f"edit {made.entry_file.relative_to(repository)} and the '{made.bib_key}' entry at the end of "
        f"{made.bib_file.relative_to(repository)} (real metadata; log the check in bib/VERIFICATION.md)",
    ]
    if made.implementation is not None:
        what = "the data pipeline" if shape == NewShape.pipeline or branch.startswith("black-box") else "the loss"
        steps.append(f"implement {what} in {made.implementation.relative_to(repository)}")
        steps.append(f"complete and run: pytest {made.test.relative_to(repository)}")
    steps += ["kdatlas validate   # until it says 'no problems'", "kdatlas docs serve # see the new page"]
    errors.print("\n[bold]Next:[/]\n" + "\n".join(f"  {i}. {step}" for i, step in enumerate(steps, 1)))
