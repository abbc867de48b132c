"""The contribution templates: the issue form is a valid GitHub form that covers the taxonomy."""

from __future__ import annotations

from pathlib import Path

import yaml

from kdatlas.taxonomy import load_taxonomy

REPO = Path(__file__).resolve().parents[2]
FORM = REPO / ".github" / "ISSUE_TEMPLATE" / "propose-method.yml"
ELEMENT_TYPES = {"markdown", "input", "textarea", "dropdown", "checkboxes"}


def test_issue_form_is_well_formed() -> None:
    form = yaml.safe_load(FORM.read_text(encoding="utf-8"))
    assert {"name", "description", "body"} <= set(form)
    ids = [element["id"] for element in form["body"] if "id" in element]
    assert len(ids) == len(set(ids)), "element ids must be unique"
    for element in form["body"]:
        assert element["type"] in ELEMENT_TYPES
        if element["type"] != "markdown":
            assert element["attributes"]["label"], element
        if element["type"] == "dropdown":
            assert element["attributes"]["options"], element
    required = {e["id"] for e in form["body"] if e.get("validations", {}).get("required")}
    assert {"title", "identifier", "venue", "branch", "idea"} <= required


def test_issue_form_offers_every_top_level_branch() -> None:
    form = yaml.safe_load(FORM.read_text(encoding="utf-8"))
    branch_options = next(e for e in form["body"] if e.get("id") == "branch")["attributes"]["options"]
    taxonomy, _ = load_taxonomy(REPO)
    offered = " ".join(branch_options).lower().replace("-", " ")
    for branch in taxonomy.children(None):
        if branch.id != "surveys":  # surveys are added by hand
            assert branch.id.replace("-", " ") in offered, branch.id


def test_pull_request_checklist_names_the_checks() -> None:
    text = (REPO / ".github" / "pull_request_template.md").read_text(encoding="utf-8")
    for check in ("make test", "FILL IN", "bib/VERIFICATION.md", "- [ ]"):
        assert check in text
