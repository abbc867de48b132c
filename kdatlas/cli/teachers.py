"""``kdatlas teachers list`` and ``kdatlas teachers build``: the shipped embedded teachers.

The package ships the teachers its recipes train, so no run trains one; ``build`` retrains them
from their recipes (`reference_impls.teachers.catalog`) and reports how each rebuilt teacher
compares with the shipped one.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer
from rich.table import Table

from kdatlas.cli.common import console, fail

teachers_app = typer.Typer(help="The embedded teachers: shipped weights, and rebuilding them.", no_args_is_help=True)


class TeacherName(str, Enum):
    strings = "strings"
    instructions = "instructions"
    encoder_mlm = "encoder-mlm"
    encoder_classifier = "encoder-classifier"


def _metrics(card: dict | None) -> str:
    if not card:
        return "—"
    if "test_exact_match" in card:
        return f"exact match {card['test_exact_match']:.3f}"
    if "test_accuracy" in card:
        return f"accuracy {card['test_accuracy']:.3f} (OOD {card['ood_accuracy']:.3f})"
    if "final_mlm_loss" in card:
        return f"masked-LM loss {card['final_mlm_loss']:.3f} (last step)"
    accuracy = card.get("meta_task_accuracy", {})
    return ", ".join(f"{name} {value:.2f}" for name, value in accuracy.items()) or "—"


@teachers_app.command("list")
def list_teachers(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Each embedded teacher: its recipe key, whether it is shipped or cached, its card's metrics."""
    from reference_impls.teachers import catalog

    rows = [catalog.status(teacher) for teacher in catalog.TEACHERS.values()]
    stale = [str(path) for path in catalog.stale_entries()]
    if as_json:
        console.print_json(json.dumps({"teachers": rows, "stale_shipped_entries": stale}))
        return
    table = Table(title="embedded teachers", title_justify="left")
    for column in ("name", "key", "shipped", "cached", "card"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["key"], "yes" if row["shipped"] else "no",
                      "yes" if row["cached"] else "no", _metrics(row["card"]))
    console.print(table)
    for path in stale:
        console.print(f"[yellow]stale shipped entry (no current recipe makes it): {path}[/]")


@teachers_app.command("build")
def build(
    names: Annotated[
        list[TeacherName] | None, typer.Argument(help="Which teachers (default: all).", show_default=False)
    ] = None,
    ship: Annotated[
        bool,
        typer.Option(help="Replace the shipped weights with the rebuilt ones (then regenerate every results file)."),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Retrain teachers from their recipes and compare each with the shipped one (about 1.5 minutes
    for `strings`, 10 for `instructions`, 1.5 for the encoder pair, on 2 CPU cores)."""
    from reference_impls.teachers import catalog

    chosen = [catalog.TEACHERS[name.value] for name in (names or list(TeacherName))]
    for teacher in chosen:
        console.print(f"rebuilding [bold]{teacher.name}[/] ({teacher.summary}), key {teacher.key}")
        rebuilt, comparison = catalog.rebuild(teacher, progress=progress)
        if not comparison["shipped"]:
            console.print(f"  nothing shipped for this recipe; rebuilt: {_metrics(comparison['rebuilt_card'])}")
        else:
            same = "identical weights" if comparison["identical_weights"] else (
                f"weights differ (largest |Δ| {comparison['max_abs_weight_difference']:.3g})"
            )
            console.print(f"  {same}; outputs agree on {comparison['greedy_agreement']:.1%} of "
                          f"{comparison['probe_prompts']} held-out prompts")
            console.print(f"  shipped: {_metrics(comparison['shipped_card'])}")
            console.print(f"  rebuilt: {_metrics(comparison['rebuilt_card'])}")
        if ship:
            try:
                console.print(f"  shipped to {catalog.ship(teacher, rebuilt)}")
            except OSError as error:
                raise fail(f"cannot write the shipped teacher: {error}") from None
