"""The command line: list, show, cite, schema — output a user or a script relies on."""

from __future__ import annotations

import json
from pathlib import Path

import bibtexparser
import pytest
from typer.testing import CliRunner

from kdatlas.bib import format_authors, load_bibliography, strip_braces
from kdatlas.cli import app
from kdatlas.taxonomy import load_taxonomy

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [*args], catch_exceptions=False)


def test_list_json_covers_every_entry() -> None:
    result = invoke("list", "--json", "--root", str(REPO))
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    taxonomy, _ = load_taxonomy(REPO)
    assert {row["id"] for row in rows} == set(taxonomy.entries)
    assert {"id", "name", "branch", "year", "status", "papers", "file"} <= set(rows[0])


def test_list_filters_by_branch() -> None:
    rows = json.loads(invoke("list", "--json", "--branch", "white-box/logits", "--root", str(REPO)).stdout)
    assert rows and all(row["branch"] == "white-box/logits" for row in rows)
    bad = runner.invoke(app, ["list", "--branch", "white-box/nope", "--root", str(REPO)])
    assert bad.exit_code == 2 and "unknown branch" in bad.stderr


def test_show_and_its_suggestion() -> None:
    result = invoke("show", "forward-kl", "--root", str(REPO))
    assert result.exit_code == 0 and "kdatlas run forward-kl" in result.stdout
    as_json = json.loads(invoke("show", "forward-kl", "--json", "--root", str(REPO)).stdout)
    assert as_json["id"] == "forward-kl" and as_json["papers"][0] == "hinton2015distilling"
    typo = runner.invoke(app, ["show", "forward-k", "--root", str(REPO)])
    assert typo.exit_code == 2 and "forward-kl" in typo.stderr


def test_cite_bibtex_parses_and_holds_the_entry_papers() -> None:
    result = invoke("cite", "forward-kl", "--root", str(REPO))
    library = bibtexparser.parse_string(result.stdout)
    assert not library.failed_blocks
    assert [e.key for e in library.entries] == ["hinton2015distilling", "kim2016sequence"]


def test_cite_text_format() -> None:
    result = invoke("cite", "seqkd", "--format", "text", "--root", str(REPO))
    assert result.stdout.strip() == (
        "Kim, Y., & Rush, A. M. (2016). Sequence-Level Knowledge Distillation. Proceedings of the 2016 "
        "Conference on Empirical Methods in Natural Language Processing. doi:10.18653/v1/D16-1139 arXiv:1606.07947"
    )


def test_cite_all_writes_the_whole_bibliography(tmp_path: Path) -> None:
    target = tmp_path / "kd.bib"
    invoke("cite", "--all", "-o", str(target), "--root", str(REPO))
    written = bibtexparser.parse_file(str(target))
    bibliography, problems = load_bibliography(REPO)
    assert not problems and not written.failed_blocks
    assert {e.key for e in written.entries} == set(bibliography.entries)


def test_cite_errors_are_clear() -> None:
    assert "give one or more entry ids" in runner.invoke(app, ["cite", "--root", str(REPO)]).stderr
    assert "no entry 'nope'" in runner.invoke(app, ["cite", "nope", "--root", str(REPO)]).stderr


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff", "Hinton, G., Vinyals, O., & Dean, J."),
        ("Kim, Yoon", "Kim, Y."),
        ("Yoon Kim and Alexander M. Rush", "Kim, Y., & Rush, A. M."),
        ("Ramos Garea, Sabela and Lee, Jean-Paul", "Ramos Garea, S., & Lee, J. P."),
    ],
)
def test_format_authors(field: str, expected: str) -> None:
    assert format_authors(field) == expected


def test_strip_braces() -> None:
    assert strip_braces("{MiniLLM}: Knowledge  {D}istillation") == "MiniLLM: Knowledge Distillation"


def test_schema_files_are_up_to_date() -> None:
    result = runner.invoke(app, ["schema", "--check", "--root", str(REPO)])
    assert result.exit_code == 0, result.stderr


def test_yaml_files_reference_the_schema() -> None:
    for path in (REPO / "taxonomy").rglob("*.yaml"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        schema = (path.parent / first.split("=", 1)[1]).resolve()
        assert schema.is_file(), f"{path}: schema reference {schema} does not exist"


def test_run_rejects_unknown_method_and_bad_override() -> None:
    unknown = runner.invoke(app, ["run", "no-such-method"])
    assert unknown.exit_code == 2 and "no implemented method 'no-such-method'" in unknown.stderr
    bad_key = runner.invoke(app, ["run", "forward-kl", "--set", "temprature=2"])
    assert bad_key.exit_code == 2 and "no hyper-parameter temprature" in bad_key.stderr
    bad_value = runner.invoke(app, ["run", "forward-kl", "--set", "temperature=hot"])
    assert bad_value.exit_code == 2 and "expected a float" in bad_value.stderr
    bad_form = runner.invoke(app, ["run", "forward-kl", "--set", "temperature"])
    assert bad_form.exit_code == 2 and "KEY=VALUE" in bad_form.stderr


def test_run_eval_data_needs_data(tmp_path: Path) -> None:
    held_out = tmp_path / "vicuna.jsonl"
    held_out.write_text('{"prompt": "a", "response": "b"}\n')
    result = runner.invoke(app, ["run", "forward-kl", "--eval-data", str(held_out), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "give --data FILE.jsonl too" in " ".join(result.stderr.split())


def test_export_writes_json_yaml_and_bib_that_round_trip(tmp_path: Path) -> None:
    import yaml

    from kdatlas.model import Entry

    result = runner.invoke(app, ["export", "-o", str(tmp_path), "--root", str(REPO)])
    assert result.exit_code == 0, result.stderr
    document = json.loads((tmp_path / "kdatlas-taxonomy.json").read_text())
    taxonomy, _ = load_taxonomy(REPO)
    assert {e["id"] for e in document["entries"]} == set(taxonomy.entries)
    assert [Entry.model_validate(e) for e in document["entries"]] == taxonomy.ordered_entries()
    assert yaml.safe_load((tmp_path / "kdatlas-taxonomy.yaml").read_text()) == document
    library = bibtexparser.parse_file(str(tmp_path / "kd.bib"))
    assert not library.failed_blocks and len(library.entries) == len(load_bibliography(REPO)[0].entries)


def test_export_refuses_invalid_data(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(REPO / "taxonomy", tmp_path / "repo" / "taxonomy")
    shutil.copytree(REPO / "bib", tmp_path / "repo" / "bib")
    entry = tmp_path / "repo" / "taxonomy" / "white-box" / "logits" / "forward-kl.yaml"
    entry.write_text(entry.read_text().replace("year: 2016", "year: soon"))
    result = runner.invoke(app, ["export", "-o", str(tmp_path / "out"), "--root", str(tmp_path / "repo")])
    assert result.exit_code == 1 and "kdatlas validate" in result.stderr
    assert not (tmp_path / "out").exists()
