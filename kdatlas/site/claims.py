"""The claims page: every claim of `benchmarks/claims.yaml` with its verdict, evidence and a plot.

The results are `benchmarks/results/claims.json` (``kdatlas claims --run``), read at build time;
a site built without them lists the claims as untested. Each check shows both arms per seed,
their means with 95% intervals and the paired difference; the plot draws the two arms' intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdatlas.leaderboard import format_interval
from kdatlas.site.plots import Span, intervals
from kdatlas.site.render import render

CLAIMS_RESULTS = Path("benchmarks") / "results" / "claims.json"
CLAIMS_PAGE = "claims.md"


def load_claim_results(root: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(results, None)``, ``(None, None)`` when none are committed, or ``(None, problem)``."""
    from kdatlas.claims import ClaimsError, read_results

    path = root / CLAIMS_RESULTS
    if not path.exists():
        return None, None
    try:
        return read_results(path), None
    except ClaimsError as error:
        return None, str(error)


def _check_plot(check: dict[str, Any]) -> str:
    spans = [
        Span(f"a: {check['a']}"[:34], check["a_interval"]["mean"], check["a_interval"]["low"], check["a_interval"]["high"], True),
        Span(f"b: {check['b']}"[:34], check["b_interval"]["mean"], check["b_interval"]["low"], check["b_interval"]["high"]),
    ]
    return intervals(spans, title=f"{check['metric']}: a and b over seeds (95% intervals)",
                     x_label=f"{check['metric']} ({check['better']} is better)", reference=None)  # fmt: skip


def _family_plot(claim: dict[str, Any]) -> str:
    spans = [
        Span(f"{family}: {method}", v["interval"]["mean"], v["interval"]["low"], v["interval"]["high"], method == claim["best"][family])
        for family, methods in claim["families"].items()
        for method, v in methods.items()
    ]
    return intervals(spans, title=f"{claim['metric']} per family and method (95% intervals; the best of each family highlighted)",
                     x_label=f"{claim['metric']} ({claim['better']} is better)", reference=None)  # fmt: skip


def render_claims_page(results: dict[str, Any] | None, claims: list[Any], cite: Callable[[str], str]) -> str:
    """The page: a summary table, then every claim with statement, test, command, evidence, plot."""
    shown = []
    by_id = {c["id"]: c for c in (results or {}).get("claims", [])}
    for claim in claims:
        result = by_id.get(claim.id)
        item: dict[str, Any] = {"claim": claim, "result": result, "cite": cite(claim.paper), "plots": []}
        if result is not None and result["kind"] == "family":
            item["plots"] = [_family_plot(result)]
        elif result is not None:
            item["plots"] = [_check_plot(check) for check in result["checks"]]
            item["checks"] = [
                {**check, "a_text": format_interval(check["a_interval"]), "b_text": format_interval(check["b_interval"]),
                 "difference": format_interval(check["a_minus_b"])}
                for check in result["checks"]
            ]  # fmt: skip
        shown.append(item)
    counts = {v: sum(1 for i in shown if i["result"] and i["result"]["verdict"] == v) for v in ("reproduced", "not reproduced", "inconclusive")}
    return render("claims.md.j2", results=results, items=shown, counts=counts, results_file=CLAIMS_RESULTS.as_posix())
