"""The statistics and the catalogue agree with `kdatlas list`, and the map covers the survey."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from kdatlas.cli import app
from kdatlas.site.catalogue import render_catalogue_page, render_statistics_page
from kdatlas.site.stats import compute_stats, venue_series
from kdatlas.taxonomy import load_taxonomy

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _list_rows() -> list[dict[str, object]]:
    result = runner.invoke(app, ["list", "--json", "--root", str(REPO)], catch_exceptions=False)
    return json.loads(result.stdout)


def _stats_json() -> dict[str, object]:
    result = runner.invoke(app, ["stats", "--json", "--root", str(REPO)], catch_exceptions=False)
    assert result.exit_code == 0
    return json.loads(result.stdout)


def test_stats_match_kdatlas_list() -> None:
    rows, stats = _list_rows(), _stats_json()
    assert stats["total"] == len(rows)
    assert stats["by_status"] == dict(Counter(r["status"] for r in rows))
    assert stats["by_placement"] == dict(Counter(r["survey_placement"] for r in rows))
    assert stats["by_year"] == {str(y): c for y, c in sorted(Counter(r["year"] for r in rows).items())}
    assert stats["by_venue_series"] == dict(Counter(venue_series(r["venue"]) for r in rows))
    for branch in stats["branches"]:
        inside = [
            r
            for r in rows
            if r["branch"] == branch["branch"] or r["branch"].startswith(branch["branch"] + "/")
        ]
        assert branch["entries"] == len(inside)
        assert branch["implemented"] == sum(r["status"] == "implemented" for r in inside)


def test_statistics_page_shows_the_same_numbers() -> None:
    taxonomy, _ = load_taxonomy(REPO)
    stats = compute_stats(taxonomy)
    page = render_statistics_page(stats, branch_href=lambda b: b, catalogue_link="catalogue.md")
    assert f"**{stats.total} entries**" in page
    for branch in stats.branches:
        row = re.search(
            rf"\[{re.escape(branch.name)}\]\({re.escape(branch.branch)}\) \| (\d+) \| (\d+) \|", page
        )
        assert row and (int(row[1]), int(row[2])) == (branch.entries, branch.implemented)
    assert page.count("<rect ") == sum(len(c) for c in stats.by_year_placement.values())


def test_catalogue_has_one_filterable_row_per_entry() -> None:
    taxonomy, _ = load_taxonomy(REPO)
    page = render_catalogue_page(taxonomy, entry_href=lambda i: f"../entries/{i}/", branch_name=str)
    rows = re.findall(r'<tr data-branch="([^"]+)" data-year="(\d+)"', page)
    assert len(rows) == len(taxonomy.entries)
    for name in ("branch", "year", "venue", "tag", "status", "placement", "text"):
        assert f'data-filter="{name}"' in page


def test_venue_series_drops_years_and_remarks() -> None:
    assert venue_series("Findings of ACL 2023") == "Findings of ACL"
    assert venue_series("NeurIPS 2019 EMC² Workshop (arXiv)") == "NeurIPS EMC² Workshop"
    assert venue_series("arXiv") == "arXiv"


# Every method, evaluation, application and direction entry of the survey reconstruction in the
# research notes (survey_taxonomy.yaml, 62 ids), copied here so that CI checks it without the notes.
SURVEY_IDS = [
    "distilbilstm",
    "distilbert",
    "mixkd",
    "reaugkd",
    "pd",
    "minillm",
    "gkd",
    "f-distill",
    "minima",
    "pkd",
    "metadistil",
    "ad-kd",
    "xtremedistil",
    "tinybert",
    "minilm",
    "ted",
    "mobilebert",
    "homodistil",
    "icl-distillation",
    "llm-r",
    "metaicl",
    "in-context-tuning",
    "secokd",
    "mend",
    "aicd",
    "distilling-step-by-step",
    "fine-tune-cot",
    "mcc-kd",
    "socratic-cot",
    "scott",
    "pad",
    "doctor",
    "kard",
    "symbolic-kd",
    "s3",
    "self-instruct",
    "alpaca",
    "vicuna",
    "gpt4all",
    "gpt-4-llm",
    "lamini-lm",
    "lion",
    "universalner",
    "persd",
    "kd-vanilla",
    "seqkd",
    "minillm-eval",
    "js",
    "huatuogpt",
    "chatdoctor",
    "pmc-llama",
    "darwin",
    "wizardmath",
    "k2",
    "lawyer-llama",
    "chatlaw",
    "disco",
    "symbolic-kd-fd",
    "comd",
    "vpd",
    "lskd",
    "stanton-does-kd-work",
]


# Survey-reconstruction ids that are deliberately not entries of their own, and why.
NOT_SEPARATE_ENTRIES = {
    "pd": "pre-trained-distillation",  # the same paper under a clearer id
    "kd-vanilla": "vanilla-kd",
    "minillm-eval": "minillm",  # the robustness study's MiniLLM is the MiniLLM entry
    "js": "generalized-jsd",
    "symbolic-kd-fd": "symbolic-kd",  # the future-directions mention of the same paper
    "stanton-does-kd-work": "interpretability-of-distillation",  # cited there (stanton2021doeskd)
    "aicd": None,  # no paper could be identified (title only, no authors or venue): see bib/VERIFICATION.md
    "s3": None,  # unresolved in the reconstruction itself
}


def test_every_core_entry_of_the_survey_is_mapped() -> None:
    ids = {row["id"] for row in _list_rows()}
    assert len(SURVEY_IDS) == 62
    missing = sorted(i for i in set(SURVEY_IDS) - ids if i not in NOT_SEPARATE_ENTRIES)
    assert missing == []
    assert all(target is None or target in ids for target in NOT_SEPARATE_ENTRIES.values())


def test_at_least_fifteen_entries_beyond_the_survey() -> None:
    beyond = [r for r in _list_rows() if r["survey_placement"] == "beyond-survey"]
    assert len(beyond) >= 15, [r["id"] for r in beyond]
