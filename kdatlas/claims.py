"""Claims from the papers with verdicts: each tested at toy scale, paired by seed.

The claims are data (``benchmarks/claims.yaml``, read with ``yaml.safe_load``): a paraphrased
statement, where the paper makes it, and one or more *checks*. A check compares two *arms* — a
method with its defaults or a variant (``set`` hyper-parameters, ``source``, ``run`` config
fields, the ``baseline`` role) — on one metric over the same seeds. Every arm's cells run through
`kdatlas.leaderboard.run_cell`, so they share the leaderboard's cache: an arm that is a board
cell costs nothing, and a rerun recomputes only what changed.

Verdicts: a check is *reproduced* when the paired 95% interval of a − b over seeds excludes 0 in
the expected direction (by the metric's better direction), *not reproduced* when it excludes 0
the other way, *inconclusive* otherwise. A claim is reproduced when all of its checks are, not
reproduced when any is not, inconclusive otherwise.

A ``kind: family`` claim (the survey's "the best algorithm changes across model families") runs
every method for every student family and asks whether the best method (by mean) differs between
families: reproduced when it does and, in every family, that family's best beats the other
families' bests at 95% (paired by seed); not reproduced when one method is best everywhere and
beats every other method at 95% in every family; inconclusive otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from kdatlas.leaderboard import better_direction, read_results_file, run_cell
from kdatlas.stats import mean_interval, paired_difference

CLAIMS_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
CLAIMS_FILE = REPO / "benchmarks" / "claims.yaml"
RESULTS_FILE = REPO / "benchmarks" / "results" / "claims.json"
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


class ClaimsError(ValueError):
    """A claims file that cannot be used, with where and how to fix it."""


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a method, optionally a variant of it, and which student is read."""

    method: str
    set: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    run: dict[str, Any] = field(default_factory=dict)
    role: str = "distilled"

    @property
    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in {**self.set, **self.run}.items()]
        parts += [f"source {self.source}"] if self.source else []
        parts += ["baseline"] if self.role == "baseline" else []
        return self.method + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True)
class Check:
    a: Arm
    b: Arm
    metric: str
    expect: str  # "a" or "b": which arm the paper says is better


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    where: str
    statement: str
    test: str
    checks: tuple[Check, ...] = ()
    kind: str = "paired"
    methods: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    metric: str = ""

    @property
    def command(self) -> str:
        return f"kdatlas claims --run --only {self.id}"


def _arm(raw: Any, where: str) -> Arm:
    if not isinstance(raw, dict) or "method" not in raw:
        raise ClaimsError(f"{where}: an arm is a mapping with at least `method` (e.g. {{method: forward-kl}})")
    known = {f.name for f in fields(Arm)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ClaimsError(f"{where}: unknown arm key(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
    if raw.get("role", "distilled") not in ("distilled", "baseline"):
        raise ClaimsError(f"{where}: role must be distilled or baseline, not {raw['role']!r}")
    settings = {str(k): str(v) for k, v in (raw.get("set") or {}).items()}
    return Arm(raw["method"], settings, raw.get("source"), dict(raw.get("run") or {}), raw.get("role", "distilled"))


def load_claims(path: Path = CLAIMS_FILE) -> tuple[int, list[Claim]]:
    """``(seeds, claims)`` from a claims file.

    Raises:
        ClaimsError: Not YAML, a missing field, an unknown key, a repeated id — naming the claim.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ClaimsError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict) or data.get("version") != CLAIMS_VERSION or not isinstance(data.get("claims"), list):
        raise ClaimsError(f"{path}: expected `version: {CLAIMS_VERSION}`, `seeds` and a `claims` list")
    claims, seen = [], set()
    for number, raw in enumerate(data["claims"], start=1):
        where = f"{path.name}, claim {raw.get('id', number) if isinstance(raw, dict) else number}"
        if not isinstance(raw, dict):
            raise ClaimsError(f"{where}: a claim is a mapping")
        missing = [k for k in ("id", "paper", "where", "statement", "test") if not raw.get(k)]
        if missing:
            raise ClaimsError(f"{where}: missing {', '.join(missing)}")
        if raw["id"] in seen:
            raise ClaimsError(f"{where}: the id {raw['id']!r} is used twice")
        seen.add(raw["id"])
        text = {k: " ".join(str(raw[k]).split()) for k in ("id", "paper", "where", "statement", "test")}
        if raw.get("kind", "paired") == "family":
            if not (raw.get("methods") and raw.get("families") and raw.get("metric")):
                raise ClaimsError(f"{where}: a family claim needs `methods`, `families` and `metric`")
            claims.append(Claim(**text, kind="family", methods=tuple(raw["methods"]),
                                families=tuple(raw["families"]), metric=raw["metric"]))  # fmt: skip
            continue
        if not raw.get("checks"):
            raise ClaimsError(f"{where}: needs at least one check (a, b, metric, expect)")
        checks = []
        for index, check in enumerate(raw["checks"], start=1):
            spot = f"{where}, check {index}"
            if not isinstance(check, dict) or check.get("expect") not in ("a", "b") or not check.get("metric"):
                raise ClaimsError(f"{spot}: a check needs `a`, `b`, `metric` and `expect: a` or `expect: b`")
            checks.append(Check(_arm(check.get("a"), spot), _arm(check.get("b"), spot), check["metric"], check["expect"]))
        claims.append(Claim(**text, checks=tuple(checks)))
    return int(data.get("seeds", 3)), claims


# ------------------------------------------------------------------------------------- running


def _values(arm: Arm, metric: str, seeds: Sequence[int], config: Any, run: Callable[..., Any] | None) -> list[float]:
    """The arm's ``metric`` on each seed (its cells run or come from the cache)."""
    arm_config = replace(config, **arm.run)
    values = []
    for seed in seeds:
        cell = run_cell(arm.method, seed, arm_config, overrides=arm.set, source=arm.source, run=run)
        value = cell["metrics"][arm.role].get(metric)
        if value is None:
            raise ClaimsError(f"{arm.label}, seed {seed}: no metric {metric!r} (it reports {', '.join(cell['metrics'][arm.role])})")
        values.append(value)
    return values


def _verdict(difference: Any, better_is_higher: bool, a_expected: bool) -> str:
    if not difference.excludes_zero:
        return "inconclusive"
    a_better = (difference.mean > 0) == better_is_higher
    return "reproduced" if a_better == a_expected else "not reproduced"


def _combine(verdicts: Sequence[str]) -> str:
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    return "not reproduced" if "not reproduced" in verdicts else "inconclusive"


def _paired(claim: Claim, seeds: Sequence[int], config: Any, run: Callable[..., Any] | None) -> dict[str, Any]:
    checks = []
    for check in claim.checks:
        a, b = (_values(arm, check.metric, seeds, config, run) for arm in (check.a, check.b))
        difference = paired_difference(a, b)
        higher = better_direction(check.metric) == "higher"
        checks.append({
            "a": check.a.label, "b": check.b.label, "metric": check.metric,
            "better": "higher" if higher else "lower", "expect": check.expect,
            "a_values": a, "b_values": b,
            "a_interval": mean_interval(a).as_dict(), "b_interval": mean_interval(b).as_dict(),
            "a_minus_b": difference.as_dict(),
            "verdict": _verdict(difference, higher, check.expect == "a"),
        })  # fmt: skip
    return {"checks": checks, "verdict": _combine([c["verdict"] for c in checks])}


def _family(claim: Claim, seeds: Sequence[int], config: Any, run: Callable[..., Any] | None) -> dict[str, Any]:
    higher = better_direction(claim.metric) == "higher"
    sign = 1 if higher else -1
    tables: dict[str, dict[str, list[float]]] = {}
    for family in claim.families:
        arms = {m: Arm(m, run={"student_family": family}) for m in claim.methods}
        tables[family] = {m: _values(arm, claim.metric, seeds, config, run) for m, arm in arms.items()}
    best = {f: max(t, key=lambda m: sign * sum(t[m])) for f, t in tables.items()}

    def beats(family: str, winner: str, others: Sequence[str]) -> bool:
        return all(
            (d := paired_difference(tables[family][winner], tables[family][o])).excludes_zero and sign * d.mean > 0
            for o in others if o != winner
        )  # fmt: skip

    if len(set(best.values())) > 1:
        verdict = "reproduced" if all(beats(f, best[f], list(best.values())) for f in best) else "inconclusive"
    else:
        winner = next(iter(best.values()))
        verdict = "not reproduced" if all(beats(f, winner, claim.methods) for f in best) else "inconclusive"
    return {
        "metric": claim.metric,
        "better": "higher" if higher else "lower",
        "families": {
            f: {m: {"values": v, "interval": mean_interval(v).as_dict()} for m, v in t.items()} for f, t in tables.items()
        },
        "best": best,
        "verdict": verdict,
    }


def evaluate_claims(
    claims: Sequence[Claim],
    seeds: Sequence[int],
    config: Any = None,
    *,
    run: Callable[..., Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or read from the cache) every arm of ``claims`` and give each its verdict."""
    from rich.progress import Progress

    from reference_impls.core.recipe import RunConfig

    config = replace(config or RunConfig(device="cpu"), progress=False)
    results = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("claims", total=len(claims))
        for claim in claims:
            bar.update(task, description=claim.id)
            outcome = _family(claim, seeds, config, run) if claim.kind == "family" else _paired(claim, seeds, config, run)
            results.append({
                "id": claim.id, "paper": claim.paper, "where": claim.where, "statement": claim.statement,
                "test": claim.test, "kind": claim.kind, "command": claim.command, **outcome,
            })  # fmt: skip
            bar.advance(task)
    return {"version": CLAIMS_VERSION, "seeds": list(seeds), "claims": results}


def write_results(results: dict[str, Any], path: Path = RESULTS_FILE, *, only: bool = False) -> None:
    """Write ``results``; with ``only`` (a subset was run) merge them into the file's other claims."""
    if only and path.exists():
        previous = read_results(path)
        fresh = {c["id"]: c for c in results["claims"]}
        merged = [fresh.pop(c["id"], c) for c in previous["claims"]] + list(fresh.values())
        results = {**results, "claims": merged}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def read_results(path: Path = RESULTS_FILE) -> dict[str, Any]:
    """Results written by `write_results`.

    Raises:
        ClaimsError: Missing, not JSON or of another version — with what to run.
    """
    return read_results_file(path, CLAIMS_VERSION, "claim results", "kdatlas claims --run", ClaimsError)
