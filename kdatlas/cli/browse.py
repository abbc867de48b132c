"""Reading the atlas: ``list``, ``show``, ``stats``, ``cite``, ``export`` and ``schema``.

The taxonomy is read without importing the implementations (``export`` aside, which validates
them): browsing needs no torch.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdatlas.cli.common import RootOption, console, errors, fail, find_root


def _load_report(root: Path):  # -> Report (typed lazily to keep start-up light)
    """The repository's taxonomy and bibliography, with a one-line warning if it has problems."""
    from kdatlas.validate import validate_repository

    report = validate_repository(root, check_implementations=False)
    if report.problems:
        errors.print(
            f"[yellow]warning:[/] the taxonomy has {len(report.problems)} problem(s); run 'kdatlas validate' for details"
        )
    return report


def list_entries(
    branch: Annotated[
        str | None, typer.Option(help="Only entries at or below this branch, e.g. white-box/logits.")
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="Only entries of this kind (method, objective, ...).")
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="Only entries with this status (implemented, planned, ...).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (one object per entry).")] = False,
    root: RootOption = None,
) -> None:
    """List the taxonomy's entries."""
    report = _load_report(find_root(root))
    taxonomy = report.taxonomy
    if branch and branch not in taxonomy.branches:
        raise fail(f"unknown branch '{branch}'. Branches: {', '.join(sorted(taxonomy.branches))}")
    entries = [
        e
        for e in taxonomy.ordered_entries()
        if (not branch or e.branch == branch or e.branch.startswith(branch + "/"))
        and (not kind or e.kind.value == kind)
        and (not status or e.status.value == status)
    ]
    if as_json:
        rows = [
            {
                "id": e.id,
                "name": e.name,
                "kind": e.kind.value,
                "branch": e.branch,
                "year": e.year,
                "venue": e.venue,
                "teacher_access": e.teacher_access.value,
                "status": e.status.value,
                "survey_placement": e.survey.placement.value,
                "papers": e.papers,
                "tags": e.tags,
                "file": str(taxonomy.files[e.id].relative_to(taxonomy.root)),
            }
            for e in entries
        ]
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{len(entries)} entries", show_lines=False)
    for column in ("id", "name", "branch", "year", "status"):
        table.add_column(column)
    for e in entries:
        colour = "green" if e.status.value == "implemented" else "dim"
        table.add_row(e.id, e.name, e.branch, str(e.year), f"[{colour}]{e.status.value}[/]")
    console.print(table)


def show(
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="Entry id, e.g. forward-kl.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the entry as JSON.")] = False,
    root: RootOption = None,
) -> None:
    """Show one entry: summary, key idea, hyper-parameters, papers and how to run it."""
    report = _load_report(find_root(root))
    entry = report.taxonomy.entries.get(entry_id)
    if entry is None:
        import difflib

        close = difflib.get_close_matches(entry_id, list(report.taxonomy.entries), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else " 'kdatlas list' shows the ids."
        raise fail(f"no entry '{entry_id}'.{hint}")
    if as_json:
        typer.echo(json.dumps(entry.model_dump(mode="json"), indent=2, ensure_ascii=False))
        return
    console.rule(f"[bold]{entry.name}[/] ({entry.id})")
    console.print(
        f"[dim]{entry.kind.value} · {entry.branch} · {entry.year} · {entry.venue} · teacher access: {entry.teacher_access.value} · {entry.status.value}[/]"
    )
    console.print(f"\n{entry.summary}\n\n[bold]Key idea.[/] {entry.key_idea}")
    for step_number, step in enumerate(entry.algorithm, 1):
        console.print(f"  {step_number}. {step}")
    if entry.hyperparameters:
        table = Table("hyper-parameter", "default", "source")
        for h in entry.hyperparameters:
            table.add_row(h.name, str(h.default), h.source)
        console.print(table)
    if entry.status.value == "implemented":
        console.print(f"\n[bold]Run it:[/] kdatlas run {entry.id}")
    elif entry.status_reason:
        console.print(f"\n[bold]Status:[/] {entry.status.value} — {entry.status_reason}")
    for key in entry.papers:
        if key in report.bibliography.entries:
            console.print(f"[bold]Paper:[/] {report.bibliography.text(key)}")


class CiteFormat(str, Enum):
    bibtex = "bibtex"
    text = "text"


def cite(
    entry_ids: Annotated[
        list[str] | None, typer.Argument(metavar="[ID]...", help="Entry ids whose papers to cite.")
    ] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="The whole bibliography.")] = False,
    fmt: Annotated[
        CiteFormat, typer.Option("--format", help="bibtex or a formatted text reference.")
    ] = CiteFormat.bibtex,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write to this file instead of printing.")
    ] = None,
    root: RootOption = None,
) -> None:
    """Print (or write) the BibTeX of entries' papers, or of the whole bibliography."""
    report = _load_report(find_root(root))
    bibliography = report.bibliography
    if all_entries:
        keys = sorted(bibliography.entries)
    elif entry_ids:
        keys = []
        for entry_id in entry_ids:
            entry = report.taxonomy.entries.get(entry_id)
            if entry is None:
                raise fail(f"no entry '{entry_id}' — 'kdatlas list' shows the ids")
            keys += [key for key in entry.papers if key not in keys]
        missing = [key for key in keys if key not in bibliography.entries]
        if missing:
            raise fail(f"BibTeX key(s) {', '.join(missing)} not found in bib/ — run 'kdatlas validate'")
    else:
        raise fail("give one or more entry ids, or --all")
    if fmt is CiteFormat.bibtex:
        text = bibliography.bibtex(keys)
    else:
        text = "\n".join(bibliography.text(key) for key in keys) + "\n"
    if output:
        output.write_text(text, encoding="utf-8")
        errors.print(f"wrote {len(keys)} reference(s) to {output}")
    else:
        typer.echo(text, nl=False)


def schema(
    check: Annotated[
        bool, typer.Option(help="Only check that the exported schema files are up to date.")
    ] = False,
    root: RootOption = None,
) -> None:
    """Export the JSON Schema of entries, branches and the vocabulary into taxonomy/schema/."""
    from kdatlas.schema import write_schemas

    stale = write_schemas(find_root(root), check_only=check)
    if check and stale:
        raise fail(f"schema files out of date: {', '.join(stale)} — run 'kdatlas schema'", code=1)
    errors.print("schema up to date" if check else "schema written")


def export(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder to write the release files into.")
    ] = Path("export"),
    root: RootOption = None,
) -> None:
    """Write the merged taxonomy (JSON and YAML) and the whole bibliography, for other tools."""
    from kdatlas.export import write_export
    from kdatlas.validate import validate_repository

    report = validate_repository(find_root(root))
    try:
        paths = write_export(report, output)
    except ValueError as error:
        raise fail(str(error), code=1) from None
    for path in paths:
        errors.print(f"wrote {path}")


def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    root: RootOption = None,
) -> None:
    """Counts per branch, status, year, venue and survey placement (the statistics page's numbers)."""
    from kdatlas.site.stats import compute_stats

    numbers = compute_stats(_load_report(find_root(root)).taxonomy)
    if as_json:
        typer.echo(json.dumps(numbers.to_json(), indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{numbers.total} entries")
    for column in ("branch", "entries", "implemented", "planned", "n/a", "in survey", "beyond"):
        table.add_column(column, justify="left" if column == "branch" else "right", no_wrap=True)
    for branch in numbers.branches:
        table.add_row(
            "  " * branch.depth + branch.branch,
            *(
                str(v)
                for v in (
                    branch.entries,
                    branch.implemented,
                    branch.planned,
                    branch.not_applicable,
                    branch.in_survey,
                    branch.beyond_survey,
                )
            ),
        )
    console.print(table)
    console.print("per year: " + ", ".join(f"{y}: {c}" for y, c in numbers.by_year.items()))
