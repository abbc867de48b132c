"""The ``kdatlas`` command line: browse, validate, cite, run, and build the docs.

Heavy imports (torch, transformers, mkdocs) happen inside the commands that need them, so that
``kdatlas list`` and ``kdatlas validate`` start quickly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kdatlas.repo import RepositoryNotFound, find_repository

app = typer.Typer(
    help="kdatlas — a survey-as-code knowledge base for knowledge distillation of LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
docs_app = typer.Typer(help="Build or serve the documentation site.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")

console = Console()
errors = Console(stderr=True)

RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="Repository folder (default: the one containing the current directory)."),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _root(root: Path | None) -> Path:
    try:
        return find_repository(root)
    except RepositoryNotFound as error:
        raise _fail(str(error)) from None


def _load(root: Path):  # -> Report (typed lazily to keep start-up light)
    from kdatlas.validate import validate_repository

    report = validate_repository(root, check_implementations=False)
    if report.problems:
        errors.print(
            f"[yellow]warning:[/] the taxonomy has {len(report.problems)} problem(s); run 'kdatlas validate' for details"
        )
    return report


@app.command("list")
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
    report = _load(_root(root))
    taxonomy = report.taxonomy
    if branch and branch not in taxonomy.branches:
        raise _fail(f"unknown branch '{branch}'. Branches: {', '.join(sorted(taxonomy.branches))}")
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


@app.command()
def show(
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="Entry id, e.g. forward-kl.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the entry as JSON.")] = False,
    root: RootOption = None,
) -> None:
    """Show one entry: summary, key idea, hyper-parameters, papers and how to run it."""
    report = _load(_root(root))
    entry = report.taxonomy.entries.get(entry_id)
    if entry is None:
        import difflib

        close = difflib.get_close_matches(entry_id, list(report.taxonomy.entries), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else " 'kdatlas list' shows the ids."
        raise _fail(f"no entry '{entry_id}'.{hint}")
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


@app.command()
def validate(
    path: Annotated[
        Path | None, typer.Argument(help="Repository to check (default: the current one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
) -> None:
    """Check the taxonomy and bibliography: every problem, one pass, as file:line: problem — fix."""
    from kdatlas.validate import validate_repository

    root = _root(path)
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


class CiteFormat(str, Enum):
    bibtex = "bibtex"
    text = "text"


@app.command()
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
    report = _load(_root(root))
    bibliography = report.bibliography
    if all_entries:
        keys = sorted(bibliography.entries)
    elif entry_ids:
        keys = []
        for entry_id in entry_ids:
            entry = report.taxonomy.entries.get(entry_id)
            if entry is None:
                raise _fail(f"no entry '{entry_id}' — 'kdatlas list' shows the ids")
            keys += [key for key in entry.papers if key not in keys]
        missing = [key for key in keys if key not in bibliography.entries]
        if missing:
            raise _fail(f"BibTeX key(s) {', '.join(missing)} not found in bib/ — run 'kdatlas validate'")
    else:
        raise _fail("give one or more entry ids, or --all")
    if fmt is CiteFormat.bibtex:
        text = bibliography.bibtex(keys)
    else:
        text = "\n".join(bibliography.text(key) for key in keys) + "\n"
    if output:
        output.write_text(text, encoding="utf-8")
        errors.print(f"wrote {len(keys)} reference(s) to {output}")
    else:
        typer.echo(text, nl=False)


def _parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _fail(f"--set expects KEY=VALUE, got '{pair}' (e.g. --set temperature=2.0)")
        overrides[key.strip()] = value.strip()
    return overrides


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def run(
    method_id: Annotated[str, typer.Argument(metavar="ID", help="An implemented entry id, e.g. forward-kl.")],
    device: Annotated[Device, typer.Option(help="auto picks CUDA when available.")] = Device.auto,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Training steps (default: the method's embedded budget).")
    ] = None,
    sft_steps: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Shared supervised warm start of both students before distillation (default: the embedded budget; 0 for none).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed for data order, initialisation and sampling.")] = 0,
    teacher: Annotated[
        str | None, typer.Option(help="Teacher: local path or hub id (default: the embedded tiny teacher).")
    ] = None,
    student: Annotated[
        str | None, typer.Option(help="Student: local path or hub id (default: the embedded tiny student).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="JSONL file with 'prompt' and 'response' per line (default: the synthetic suite)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<id>-<time>).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a hyper-parameter, e.g. --set temperature=2.0 (repeatable)."),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="Replace the method's data source: dataset, teacher, student[:T], mixed:λ[:T] or adaptive "
            "(token-level objectives only; see the 'Data sources' page)."
        ),
    ] = None,
    teacher_topk: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train from the teacher's top-K log-probs, computed once and stored (safetensors), "
            "without a teacher forward pass per step (forward-kl / reverse-kl).",
        ),
    ] = None,
    teacher_url: Annotated[
        str | None,
        typer.Option(
            help="Black-box methods: an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8765/v1 "
            "(see `kdatlas serve-teacher`)."
        ),
    ] = None,
    teacher_model: Annotated[
        str | None, typer.Option(help="Model name sent to --teacher-url (default: kdatlas-embedded-teacher).")
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the endpoint's API key (default: OPENAI_API_KEY)."),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow custom model code from the hub (off by default).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Distil a student with a method and compare it with the baseline student and the teacher."""
    from kdatlas.runner import RunError, run_method
    from reference_impls.core.recipe import RunConfig

    endpoint = {"teacher_model": teacher_model, "api_key_env": api_key_env}
    config = RunConfig(
        device=device.value,
        steps=steps,
        sft_steps=sft_steps,
        seed=seed,
        teacher=teacher,
        teacher_url=teacher_url,
        student=student,
        data=data,
        trust_remote_code=trust_remote_code,
        teacher_topk=teacher_topk,
        progress=progress,
        **{name: value for name, value in endpoint.items() if value is not None},
    )
    try:
        run_method(method_id, config, out=out, overrides=_parse_overrides(set_ or []), source=source, console=console)
    except RunError as error:
        raise _fail(str(error)) from None


@app.command()
def schema(
    check: Annotated[
        bool, typer.Option(help="Only check that the exported schema files are up to date.")
    ] = False,
    root: RootOption = None,
) -> None:
    """Export the JSON Schema of entries, branches and the vocabulary into taxonomy/schema/."""
    from kdatlas.schema import write_schemas

    stale = write_schemas(_root(root), check_only=check)
    if check and stale:
        raise _fail(f"schema files out of date: {', '.join(stale)} — run 'kdatlas schema'", code=1)
    errors.print("schema up to date" if check else "schema written")


@app.command()
def export(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder to write the release files into.")
    ] = Path("export"),
    root: RootOption = None,
) -> None:
    """Write the merged taxonomy (JSON and YAML) and the whole bibliography, for other tools."""
    from kdatlas.export import write_export
    from kdatlas.validate import validate_repository

    report = validate_repository(_root(root))
    try:
        paths = write_export(report, output)
    except ValueError as error:
        raise _fail(str(error), code=1) from None
    for path in paths:
        errors.print(f"wrote {path}")


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    root: RootOption = None,
) -> None:
    """Counts per branch, status, year, venue and survey placement (the statistics page's numbers)."""
    from kdatlas.site.stats import compute_stats

    numbers = compute_stats(_load(_root(root)).taxonomy)
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


@app.command()
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

    repository = _root(root)
    try:
        made = new_entry(
            repository, Kind(kind.value), entry_id, branch, title, arxiv, year, implementation,
            shape.value if shape else None,
        )
    except ScaffoldError as error:
        raise _fail(str(error)) from None
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
        steps.append(f"implement the loss in {made.implementation.relative_to(repository)}")
        steps.append(f"complete and run: pytest {made.test.relative_to(repository)}")
    steps += ["kdatlas validate   # until it says 'no problems'", "kdatlas docs serve # see the new page"]
    errors.print("\n[bold]Next:[/]\n" + "\n".join(f"  {i}. {step}" for i, step in enumerate(steps, 1)))


@app.command("serve-teacher")
def serve_teacher(
    model: Annotated[
        str,
        typer.Option(
            help="'embedded' (the instruction teacher black-box pipelines use, trained on first use), 'embedded-whitebox' (the white-box methods' teacher) or a local path / hub id."
        ),
    ] = "embedded",
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback only unless --allow-remote).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 picks a free one).")] = 8765,
    name: Annotated[
        str | None, typer.Option(help="Model id clients send as 'model' (default: derived from --model).")
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(min=1, help="Default and upper bound of a request's max_tokens.")
    ] = 64,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="Require 'Authorization: Bearer <key>' with the key read from this environment variable."
        ),
    ] = None,
    allow_remote: Annotated[
        bool, typer.Option(help="Allow binding a non-loopback address such as 0.0.0.0 (no TLS: set a key).")
    ] = False,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when available.")] = Device.auto,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow custom model code from the hub (off by default).")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(help="Check the options and print what would be served, without loading or serving."),
    ] = False,
) -> None:
    """Serve a local model as an OpenAI-compatible endpoint (/v1/models, /v1/completions, /v1/chat/completions)."""
    from reference_impls.teachers import server as teacher_server

    try:
        teacher_server.check_bind_host(host, allow_remote)
        api_key = teacher_server.read_api_key(api_key_env) if api_key_env else None
    except ValueError as error:
        raise _fail(str(error)) from None
    auth = f"bearer key from ${api_key_env}" if api_key_env else "none"
    if dry_run:
        console.print(f"would serve {model!r} on http://{host}:{port}/v1 (authentication: {auth})")
        return
    loaded, tokenizer, default_name = teacher_server.load_served_model(model, device.value, trust_remote_code)
    config = teacher_server.ServerConfig(
        model_name=name or default_name, max_new_tokens=max_new_tokens, api_key=api_key
    )
    try:
        server = teacher_server.make_server(
            loaded, tokenizer, host=host, port=port, config=config, allow_remote=allow_remote
        )
    except (OSError, ValueError) as error:
        raise _fail(f"cannot serve on {host}:{port}: {error}") from None
    console.print(
        f"serving [bold]{config.model_name}[/] at {server.base_url} (authentication: {auth}); Ctrl+C stops"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


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
    repository = _root(root)
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
    raise typer.Exit(_mkdocs(_root(root), "serve", "--dev-addr", address))


def main() -> None:
    """Console-script entry point."""
    app()
