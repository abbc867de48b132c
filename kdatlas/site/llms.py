"""The site's text for agents: ``llms.txt`` (https://llmstxt.org) at the site root.

One Markdown file: what kdatlas is, the taxonomy as a tree, and per entry its summary, its page,
the command that runs it (implemented entries) and its leaderboard row (mean over seeds of the
distilled student, and the paired difference against the baseline with its verdict).
"""

from __future__ import annotations

from kdatlas.leaderboard import format_interval
from kdatlas.site.leaderboard import DEFAULT_SHOWN, LABELS, SHOWN, verdict
from kdatlas.site.links import Site, entry_page, page_url

LLMS_FILE = "llms.txt"


def _row_text(board: dict | None, entry_id: str) -> str:
    row = next((r for r in (board or {}).get("rows", []) if r["method_id"] == entry_id), None)
    if row is None:
        return ""
    parts = []
    for name in SHOWN.get(row["evaluation"], DEFAULT_SHOWN):
        values = row["metrics"].get(name)
        if values is not None:
            parts.append(
                f"{LABELS.get(name, name)} {format_interval(values['distilled_interval'])} "
                f"(Δ vs baseline {format_interval(values['distilled_minus_baseline'])}, {verdict(values)})"
            )
    return f" Leaderboard ({len(row['seeds'])} seeds, {row['evaluation']} suite): " + "; ".join(parts) + "."


def render_llms_txt(site: Site) -> str:
    taxonomy = site.taxonomy
    lines = [
        "# kdatlas",
        "",
        "> A survey-as-code knowledge base for knowledge distillation (KD) of large language models: a YAML "
        "taxonomy following Yang et al. (arXiv 2407.01885) and newer methods, a page per entry, and for "
        "implemented methods a compact PyTorch reference implementation that runs on CPU or GPU "
        "(`kdatlas run <id>`), with a leaderboard over seeds and claims with verdicts.",
        "",
        "Key pages: [Leaderboard](leaderboard/), [Claims](claims/), [Catalogue](catalogue/), "
        "[Bibliography](bibliography/), [Getting started](getting-started/). "
        "Machine-readable release: taxonomy JSON and kd.bib (see the catalogue page).",
        "",
    ]
    for branch in taxonomy.walk():
        depth = branch.id.count("/")
        lines.append(f"{'#' * min(depth + 2, 6)} {branch.name}")
        lines.append("")
        for entry in taxonomy.entries_in(branch.id):
            summary = " ".join(entry.summary.split())
            run = f" Run: `kdatlas run {entry.id}`." if entry.status.value == "implemented" else f" Status: {entry.status.value}."
            lines.append(f"- [{entry.name}]({page_url(entry_page(entry.id))}) (`{entry.id}`): {summary}{run}{_row_text(site.board, entry.id)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
