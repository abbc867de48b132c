"""Where each method stands in the field: peer frameworks per entry, one matrix across the site.

The data is each entry's ``peers`` list (framework, name, convention, where it was read, and the
id of a numerical parity case). Parity results come from `benchmarks/results/peer_parity.json`
(``benchmarks/peer_parity.py``: our loss against the installed peer, in its own virtual
environment); a case id the results do not hold shows as *not run*.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from kdatlas.site.render import render
from kdatlas.taxonomy import Taxonomy

PARITY_FILE = Path("benchmarks") / "results" / "peer_parity.json"
FRAMEWORKS_PAGE = "frameworks.md"


def load_parity(root: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Parity groups by id (empty when none are committed), or a problem with the file.

    A group (``trl-forward-kl``, ``torchtune-reverse-kl``, ...) is every case of one mapping: it
    passes when all its cases do, and reports the largest absolute difference.
    """
    path = root / PARITY_FILE
    if not path.exists():
        return {}, None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        groups: dict[str, dict[str, Any]] = {}
        for case in results["cases"]:
            group = groups.setdefault(case["group"], {"id": case["group"], "peer": case["peer"], "version": case["peer_version"],
                                                      "pass": True, "max_abs_diff": 0.0, "cases": 0})  # fmt: skip
            group["pass"] = group["pass"] and bool(case["pass"])
            group["max_abs_diff"] = max(group["max_abs_diff"], case["max_abs_diff"] or 0.0)
            group["cases"] += 1
        return groups, None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        return {}, f"{PARITY_FILE}: not a parity results file ({error!r}); rerun benchmarks/peer_parity.py"


def parity_text(cases: dict[str, dict[str, Any]], case_id: str | None) -> str:
    """``✓ equal (peer 1.2.3, max |Δ| 3e-08)``, ``✗ differs (...)``, ``not run`` or ``—`` (no case)."""
    if case_id is None:
        return "—"
    case = cases.get(case_id)
    if case is None:
        return "not run"
    verdict = "✓ equal" if case["pass"] else "✗ differs"
    return f"{verdict} ({case['peer']} {case['version']}, {case['cases']} cases, max \\|Δ\\| {case['max_abs_diff']:.1e})"


def render_frameworks_page(taxonomy: Taxonomy, cases: dict[str, dict[str, Any]], entry_href) -> str:
    """The matrix (methods × frameworks) and, per framework, what it implements under which name."""
    entries = [e for e in taxonomy.ordered_entries() if e.peers]
    counts = Counter(p.framework for e in entries for p in e.peers)
    frameworks = sorted(counts, key=lambda f: (-counts[f], f.lower()))
    rows = []
    for entry in entries:  # one row per method: a mark per framework column
        marks = {}
        for peer in entry.peers:
            case = cases.get(peer.parity) if peer.parity else None
            marks[peer.framework] = "✓" + ("=" if case and case["pass"] else "≠" if case else "")
        cells = [marks.get(f, "") for f in frameworks]
        rows.append({"id": entry.id, "name": entry.name, "href": entry_href(entry.id), "cells": cells})
    by_framework = {
        f: [(e, p) for e in entries for p in e.peers if p.framework == f] for f in frameworks
    }
    return render(
        "frameworks.md.j2", frameworks=frameworks, rows=rows, by_framework=by_framework,
        parity=lambda case_id: parity_text(cases, case_id), entry_href=entry_href, parity_file=PARITY_FILE.as_posix(),
    )  # fmt: skip
