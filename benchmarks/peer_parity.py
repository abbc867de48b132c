"""Numerical parity of our token-level losses with the peers' own code, each peer in its own venv.

    PYTHONPATH=. .venv/bin/python benchmarks/peer_parity.py [--peers trl,torchtune] [--out FILE] [--cache DIR]

Each peer gets a virtual environment `<cache>/<peer>-<version>/` (default cache
`~/.cache/kdatlas/peers`): `pip install torch==2.13.0` first (the CPU build here), then the peer at
a pinned version with torch pinned by a constraints file, so pip can never swap torch for another
build. This same file then runs in that venv as a worker (`--worker DIR`): it reads fixed inputs
(`torch.save` of plain tensors, read with `weights_only=True`) and writes the peer's losses as JSON.
The main process computes ours on the same inputs under the mapping stated per case and compares.
A case passes when |ours − peer| <= 1e-5 · max(|ours|, |peer|) (or <= 1e-8, for exact zeros). A
peer that cannot be installed or imported on CPU is recorded as skipped, with the error's message.
Exit code 1 if any case fails. Verified peer sources are cited beside each peer's cases.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch  # the only third-party import at module level: the worker runs in the peers' venvs

TORCH_PIN = "torch==2.13.0"
RTOL, ATOL = 1e-5, 1e-8
BETAS = (0.0, 0.5, 0.9, 1.0)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "peer_parity.json"
Tensors = dict[str, torch.Tensor]


class PeerUnavailable(RuntimeError):
    """The peer cannot be installed or imported here; the message is the error's own line."""


@dataclass(frozen=True)
class Case:
    call: str  # key of WORKER_CALLS
    options: dict[str, Any]  # JSON keyword options of that call
    inputs: str  # name of an input set of make_inputs()
    ours_name: str
    mapping: str
    ours: Callable[[Tensors], torch.Tensor] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Peer:
    name: str  # PyPI distribution
    version: str
    cases: Callable[[], list[Case]]
    no_deps: bool = False  # install only the peer (and `extra`), when its declared deps pull in what it never imports
    extra: tuple[str, ...] = ()  # further pinned requirements


# --- plumbing -------------------------------------------------------------------------------------


def error_line(text: str) -> str:
    """The message of an error output: pip's first `ERROR:` line, or a traceback's exception line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("ERROR:"):
            return re.sub(r" \(from versions: .*", "", line)[:300]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b", lines[i]):
            return " ".join(lines[i:])[:300]  # multi-line messages (torchtune's ImportError) kept whole
    return (lines[-1] if lines else "no output")[:300]


def make_inputs(seed: int = 0) -> Tensors:
    """Fixed random logits ([B,T,V] with some labels -100) and hidden states + LM heads, float32."""
    g = torch.Generator().manual_seed(seed)
    out: Tensors = {}

    def labels(b: int, t: int, v: int) -> torch.Tensor:
        return torch.randint(0, v, (b, t), generator=g)

    for name, (b, t, v) in {"a": (2, 5, 11), "b": (3, 7, 64), "c": (2, 6, 1000), "empty": (1, 3, 7)}.items():
        teacher = 3 * torch.randn(b, t, v, generator=g)
        out[f"{name}.teacher"] = teacher
        out[f"{name}.student"] = 0.6 * teacher + 2 * torch.randn(b, t, v, generator=g)
        out[f"{name}.labels"] = labels(b, t, v)
    out["a.labels"][0, :2] = -100  # a prompt
    out["a.labels"][1, -1] = -100  # a pad
    out["b.labels"][0, :3] = -100
    out["b.labels"][2] = -100  # a row with no valid token
    out["empty.labels"][:] = -100  # "c" keeps every label: the peers that do not mask compare there
    for key in ("student", "teacher", "labels"):  # "a" with a -inf vocabulary padding shared by both models
        out[f"inf.{key}"] = out[f"a.{key}"].clone()
    out["inf.student"][..., -2:] = out["inf.teacher"][..., -2:] = -torch.inf
    b, k, hs, ht, v = 2, 6, 8, 12, 50
    out["h.student_hidden"] = torch.randn(b, k, hs, generator=g)
    out["h.teacher_hidden"] = torch.randn(b, k, ht, generator=g)
    out["h.student_weight"] = 0.7 * torch.randn(v, hs, generator=g)
    out["h.teacher_weight"] = 0.7 * torch.randn(v, ht, generator=g)
    out["h.labels"] = labels(b, k, v)
    out["h.labels"][0, :2] = -100
    return out


def subset(tensors: Tensors, name: str) -> Tensors:
    return {key.split(".", 1)[1]: value for key, value in tensors.items() if key.split(".", 1)[0] == name}


def compare(ours: list[float], peer: list[float]) -> dict[str, Any]:
    if len(ours) != len(peer):
        return {"max_abs_diff": None, "rel_diff": None, "pass": False}
    diff = max(abs(a - b) for a, b in zip(ours, peer, strict=True))
    scale = max(max(abs(a), abs(b)) for a, b in zip(ours, peer, strict=True))
    rel = diff / scale if scale > 0 else 0.0
    return {"max_abs_diff": diff, "rel_diff": rel, "pass": diff <= RTOL * scale or diff <= ATOL}


def case_group(peer: str, function: str, options: dict[str, Any], ours_name: str) -> str:
    """The parity group a case belongs to: what an entry's `peers[].parity` names (e.g. `trl-forward-kl`)."""
    if peer == "trl" and function.endswith("generalized_jsd_loss"):
        beta = options.get("beta")
        return "trl-forward-kl" if beta == 0 else "trl-reverse-kl" if beta == 1 else "trl-jsd"
    if peer == "trl":
        return "trl-distillation-trainer"
    if peer == "torchtune":
        if ours_name.startswith("reverse_kl"):
            return "torchtune-reverse-kl"
        return "torchtune-forward-kl" if ours_name.startswith("forward_kl") else "torchtune-symmetric-kl"
    named = {"liger-kernel": "liger-jsd", "torchdistill": "torchdistill-kd", "textbrewer": "textbrewer-kd-ce"}
    return named.get(peer, f"{peer}-{function.rsplit('.', 1)[-1]}")


def case_record(peer: Peer, version: str, case: Case, tensors: Tensors, answer: dict[str, Any]) -> dict[str, Any]:
    """One JSON row: our value under the mapping against the worker's answer for the case."""
    ours = [float(v) for v in case.ours(subset(tensors, case.inputs)).detach().reshape(-1)]
    row = {"group": case_group(peer.name, case.call, case.options, case.ours_name),
           "peer": peer.name, "peer_version": version, "peer_function": case.call, "peer_options": case.options,
           "ours": case.ours_name, "mapping": case.mapping, "inputs": case.inputs,
           "shapes": {k: list(v.shape) for k, v in subset(tensors, case.inputs).items()}, "ours_value": ours}
    if "error" in answer:
        return {**row, "peer_value": None, "max_abs_diff": None, "rel_diff": None, "pass": False,
                "error": answer["error"]}
    return {**row, "peer_value": answer["values"], **compare(ours, answer["values"])}


def install_peer(peer: Peer, cache: Path) -> Path:
    """Create (or reuse) the peer's venv; return its python. Raises PeerUnavailable with pip's error."""
    venv = cache / f"{peer.name}-{peer.version}"
    python, ready = venv / "bin" / "python", venv / ".kdatlas-ready"
    wanted = " ".join([TORCH_PIN, f"{peer.name}=={peer.version}", *peer.extra])
    if ready.is_file() and ready.read_text() == wanted:
        return python
    pin = venv / "torch-pin.txt"
    steps = [[sys.executable, "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", "-q", TORCH_PIN],
             [str(python), "-m", "pip", "install", "-q", "-c", str(pin), *(["--no-deps"] if peer.no_deps else []),
              f"{peer.name}=={peer.version}"]]
    if peer.extra:
        steps.append([str(python), "-m", "pip", "install", "-q", "-c", str(pin), *peer.extra])
    for i, step in enumerate(steps):
        done = subprocess.run(step, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise PeerUnavailable(error_line(done.stderr + done.stdout))
        if i == 0:
            pin.write_text(TORCH_PIN + "\n")
    ready.write_text(wanted)
    return python


def run_worker(python: Path, peer: Peer, tensors: Tensors, cases: list[Case]) -> dict[str, Any]:
    """Run this file as a worker in the peer's venv; return its JSON answer."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        torch.save(tensors, work / "inputs.pt")
        spec = [{"call": c.call, "options": c.options, "inputs": c.inputs} for c in cases]
        (work / "cases.json").write_text(json.dumps({"peer": peer.name, "cases": spec}))
        # -I: no PYTHONPATH, no script directory on sys.path: the worker sees only the peer's venv.
        done = subprocess.run([str(python), "-I", str(Path(__file__).resolve()), "--worker", str(work)],
                              capture_output=True, text=True, timeout=900, cwd=work)
        if done.returncode != 0 or not (work / "answer.json").is_file():
            raise PeerUnavailable(f"worker failed: {error_line(done.stderr + done.stdout)}")
        answer = json.loads((work / "answer.json").read_text())
    if "unavailable" in answer:
        raise PeerUnavailable(answer["unavailable"])
    if not answer["torch"].startswith(TORCH_PIN.split("==")[1]):
        raise PeerUnavailable(f"the peer's venv has torch {answer['torch']}, not {TORCH_PIN}")
    return answer


def run_peer(peer: Peer, cache: Path, tensors: Tensors, *, install: Callable[..., Path] = install_peer,
             worker: Callable[..., dict[str, Any]] = run_worker) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All cases of one peer: (case rows, peer summary); a peer that is unavailable gives no rows."""
    cases = peer.cases()
    try:
        answer = worker(install(peer, cache), peer, tensors, cases)
    except (PeerUnavailable, subprocess.TimeoutExpired) as exc:
        reason = str(exc) if isinstance(exc, PeerUnavailable) else f"timed out after {exc.timeout} s"
        return [], {"status": "skipped", "version": peer.version, "reason": reason}
    rows = [case_record(peer, answer["version"], c, tensors, a) for c, a in zip(cases, answer["results"], strict=True)]
    failed = sum(not row["pass"] for row in rows)
    return rows, {"status": "ran", "version": answer["version"], "torch": answer["torch"], "python": answer["python"],
                  "install": f"{peer.name}=={peer.version}" + (" --no-deps" if peer.no_deps else "")
                  + "".join(f", {extra}" for extra in peer.extra),
                  "cases": len(rows), "failed": failed}


def write_report(path: Path, rows: list[dict[str, Any]], peers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "tolerance": {"rtol": RTOL, "atol": ATOL, "rule": "|ours - peer| <= rtol * max(|ours|, |peer|) or <= atol"},
        "summary": {"cases": len(rows), "passed": sum(r["pass"] for r in rows),
                    "failed": sum(not r["pass"] for r in rows),
                    "skipped_peers": sorted(n for n, p in peers.items() if p["status"] == "skipped")},
        "peers": peers, "cases": rows,
        "skipped": [{"peer": n, "version": p["version"], "reason": p["reason"]}
                    for n, p in peers.items() if p["status"] == "skipped"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return report


# --- mappings on our side ------------------------------------------------------------------------


def logits_of(x: Tensors, who: str) -> torch.Tensor:
    """Hidden states through the LM head, as the fused peers project them: `h @ W.T` in float32."""
    return x[f"{who}_hidden"].float() @ x[f"{who}_weight"].float().t()


def teacher_entropy(teacher_logits: torch.Tensor, labels: torch.Tensor | None, temperature: float = 1.0):
    """Per-token mean of H(P) over the valid positions, with our losses' masking and reduction."""
    from reference_impls.losses.numerics import reduce_positions

    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return reduce_positions(-(log_p.exp() * log_p).sum(-1), labels, "mean", None)


def ce_form_forward_kl(student_logits, teacher_logits, labels, temperature: float = 1.0):
    """The CE form −Σ P log Q per token (DistiLLM, torchtune, TextBrewer) = our forward KL + H(P)."""
    from reference_impls.losses.divergences import forward_kl

    kl = forward_kl(student_logits, teacher_logits, labels, temperature=temperature)
    return kl + teacher_entropy(teacher_logits, labels, temperature)


# --- the peers: worker side (runs in the peer's venv) ---------------------------------------------


def _w_trl_gkd(x: Tensors, o: dict[str, Any]) -> torch.Tensor:
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    labels = x["labels"] if o.get("labels", True) else None
    return GKDTrainer.generalized_jsd_loss(x["student"], x["teacher"], labels, beta=o["beta"],
                                           temperature=o["temperature"], reduction=o.get("reduction", "batchmean"),
                                           num_items_in_batch=o.get("num_items_in_batch"))


def _w_trl_chunked(x: Tensors, o: dict[str, Any]) -> torch.Tensor:
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    if o.get("per_token"):  # the kernel itself: one divergence per position, nothing masked
        hs, ht = x["student_hidden"].flatten(0, -2), x["teacher_hidden"].flatten(0, -2)
        return ChunkedDivergenceFunction.apply(hs, x["student_weight"], None, ht, x["teacher_weight"], None,
                                               o["beta"], o["temperature"])[0]
    mask = (x["labels"] != -100).long()
    return _chunked_divergence_loss(x["student_hidden"], x["teacher_hidden"], x["student_weight"],
                                    x["teacher_weight"], mask, o["beta"], temperature=o["temperature"])[0]


def _w_torchtune(x: Tensors, o: dict[str, Any]) -> torch.Tensor:
    from torchtune.modules import loss

    fn = getattr(loss, o["cls"])(**o.get("init", {}))
    if "Chunked" in o["cls"]:  # lists of [B, T/c, V] chunks, as the KD recipes pass them
        c = o["init"]["num_output_chunks"]
        return fn(list(x["student"].chunk(c, dim=1)), list(x["teacher"].chunk(c, dim=1)), x["labels"])
    v = x["student"].shape[-1]  # documented shape: [B*T, V] logits, [B*T] labels
    return fn(x["student"].reshape(-1, v), x["teacher"].reshape(-1, v), x["labels"].reshape(-1),
              normalize=o.get("normalize", True))


def _w_liger_jsd(x: Tensors, o: dict[str, Any]) -> torch.Tensor:
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    fn = LigerFusedLinearJSDLoss(weight_hard_loss=o["hard"], weight_soft_loss=o["soft"], beta=o["beta"],
                                 temperature=o["temperature"], compiled=False, chunk_size=o["chunk_size"])
    return fn(x["student_hidden"].flatten(0, -2), x["student_weight"], x["teacher_hidden"].flatten(0, -2),
              x["teacher_weight"], x["labels"].reshape(-1))


def _w_torchdistill_kd(x: Tensors, o: dict[str, Any]) -> torch.Tensor:
    from torchdistill.losses.mid_level import KDLoss

    fn = KDLoss("s", "o", "t", "o", temperature=o["temperature"], alpha=o["alpha"])
    v = x["student"].shape[-1]  # softmax over dim=1: LLM logits go in as [N, V] rows
    targets = x["labels"].reshape(-1) if o["targets"] else None
    return fn({"s": {"o": x["student"].reshape(-1, v)}}, {"t": {"o": x["teacher"].reshape(-1, v)}}, targets)


def _w_textbrewer_kd_ce(x: Tensors, o: dict[str, Any]) -> torch.Tensor:
    from textbrewer.distiller_utils import select_logits_with_mask
    from textbrewer.losses import kd_ce_loss

    s, t = x["student"], x["teacher"]
    if o["select"]:  # the distillers keep the rows of `logits_mask` before the KD loss, one list per model
        # (one mask for two logits fails there: the loop expands `mask` in place for the first one).
        keep = [x["labels"] != -100]
        (s,), (t,) = select_logits_with_mask([s], keep), select_logits_with_mask([t], keep)
    return kd_ce_loss(s, t, temperature=o["temperature"])


WORKER_CALLS: dict[str, Callable[[Tensors, dict[str, Any]], torch.Tensor]] = {
    "trl.experimental.gkd.gkd_trainer.GKDTrainer.generalized_jsd_loss": _w_trl_gkd,
    "trl.trainer.distillation_trainer._chunked_divergence_loss": _w_trl_chunked,
    "torchtune.modules.loss": _w_torchtune,
    "liger_kernel.chunked_loss.LigerFusedLinearJSDLoss": _w_liger_jsd,
    "torchdistill.losses.mid_level.KDLoss": _w_torchdistill_kd,
    "textbrewer.losses.kd_ce_loss": _w_textbrewer_kd_ce,
}
IMPORTS = {"trl": ["trl.experimental.gkd.gkd_trainer", "trl.trainer.distillation_trainer"],
           "torchtune": ["torchtune.modules.loss"], "liger-kernel": ["liger_kernel.chunked_loss"],
           "torchdistill": ["torchdistill.losses.mid_level"], "textbrewer": ["textbrewer.losses"]}


def worker_main(work: Path) -> None:
    from importlib.metadata import version

    spec = json.loads((work / "cases.json").read_text())
    answer: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        answer["version"] = version(spec["peer"])
        for module in IMPORTS[spec["peer"]]:
            importlib.import_module(module)
    except Exception:
        answer["unavailable"] = error_line(traceback.format_exc())
    else:
        tensors = torch.load(work / "inputs.pt", weights_only=True)
        answer["results"] = []
        for case in spec["cases"]:
            try:
                value = WORKER_CALLS[case["call"]](subset(tensors, case["inputs"]), case["options"])
                answer["results"].append({"values": [float(v) for v in value.detach().reshape(-1)]})
            except Exception:
                answer["results"].append({"error": error_line(traceback.format_exc())})
    (work / "answer.json").write_text(json.dumps(answer))


# --- the peers: our side, with the mapping verified in each peer's source --------------------------

TRL_BETA = ("TRL's β=0 is forward KL(P‖Q), β=1 reverse KL(Q‖P), 0<β<1 the JSD with M = βP + (1−β)Q: "
            "the same direction as ours; both logits ÷ T, no T²")


def trl_cases() -> list[Case]:
    from reference_impls.losses.divergences import generalized_jsd as jsd

    gkd = "trl.experimental.gkd.gkd_trainer.GKDTrainer.generalized_jsd_loss"
    cases = [
        # trl/experimental/gkd/gkd_trainer.py::GKDTrainer.generalized_jsd_loss: kl_div(logQ, logP) at β=0,
        # kl_div(logP, logQ) at β=1, else logsumexp([logQ+log1p(−β), logP+log β]); "batchmean" with labels
        # is Σ over the valid positions / n_valid.clamp_min(1).
        Case(gkd, {"beta": b, "temperature": t}, s, f"generalized_jsd(beta={b}, temperature={t})",
             f"TRL beta={b}, temperature={t} ↔ generalized_jsd(beta={b}, temperature={t}); {TRL_BETA}; "
             "TRL's batchmean with labels = our per-token mean",
             lambda x, b=b, t=t: jsd(x["student"], x["teacher"], x["labels"], beta=b, temperature=t))
        for s in ("a", "b", "c") for b in BETAS for t in (1.0, 2.0)
    ]
    cases += [
        Case(gkd, {"beta": 0.5, "temperature": 1.0, "labels": False}, "b", "generalized_jsd(beta=0.5, reduction='sum') / B",
             "TRL labels=None, batchmean ↔ our sum over all positions / B (TRL divides by jsd.size(0), the batch, "
             "not by B·T as our labels=None mean does)",
             lambda x: jsd(x["student"], x["teacher"], beta=0.5, reduction="sum") / x["student"].shape[0]),
        Case(gkd, {"beta": 0.9, "temperature": 2.0, "num_items_in_batch": 40}, "b",
             "generalized_jsd(beta=0.9, temperature=2, num_items_in_batch=40)",
             "TRL num_items_in_batch=n ↔ generalized_jsd(num_items_in_batch=n): Σ over valid positions / n",
             lambda x: jsd(x["student"], x["teacher"], x["labels"], beta=0.9, temperature=2.0, num_items_in_batch=40)),
        Case(gkd, {"beta": 0.0, "temperature": 1.0, "reduction": "sum"}, "b", "generalized_jsd(beta=0, reduction='sum')",
             "TRL reduction='sum' ↔ reduction='sum' (Σ over valid positions)",
             lambda x: jsd(x["student"], x["teacher"], x["labels"], beta=0.0, reduction="sum")),
        Case(gkd, {"beta": 0.5, "temperature": 1.0}, "empty", "generalized_jsd(beta=0.5)",
             "no valid label: both give exactly 0 (TRL clamps n_valid to 1, ours max(n_valid, 1))",
             lambda x: jsd(x["student"], x["teacher"], x["labels"], beta=0.5)),
    ]
    chunked = "trl.trainer.distillation_trainer._chunked_divergence_loss"
    for b in BETAS:  # trl/trainer/distillation_trainer.py::_chunked_divergence_loss over
        for t in (1.0, 2.0):  # trl/kernels/chunked_divergence.py::ChunkedDivergenceFunction (torch tiles on CPU)
            cases.append(Case(chunked, {"beta": b, "temperature": t}, "h", f"generalized_jsd(h @ W.T, beta={b}, temperature={t})",
                              f"TRL DistillationTrainer loss on hidden states + LM heads, completion_mask = labels != -100 "
                              f"↔ generalized_jsd on logits h @ W.T with those labels; {TRL_BETA}",
                              lambda x, b=b, t=t: jsd(logits_of(x, "student"), logits_of(x, "teacher"), x["labels"],
                                                      beta=b, temperature=t)))
        cases.append(Case(chunked, {"beta": b, "temperature": 2.0, "per_token": True}, "h",
                          f"generalized_jsd(h @ W.T, beta={b}, temperature=2, reduction='none')",
                          f"ChunkedDivergenceFunction's per-token divergence ↔ reduction='none' per position; {TRL_BETA}",
                          lambda x, b=b: jsd(logits_of(x, "student"), logits_of(x, "teacher"), beta=b,
                                             temperature=2.0, reduction="none").reshape(-1)))
    return cases


def torchtune_cases() -> list[Case]:
    from reference_impls.losses.divergences import forward_kl, reverse_kl

    def fkl_ce(x: Tensors, reduction: str = "mean") -> torch.Tensor:
        return forward_kl(x["student"], x["teacher"], x["labels"], form="ce", reduction=reduction)

    def rkl(x: Tensors, reduction: str = "mean") -> torch.Tensor:
        return reverse_kl(x["student"], x["teacher"], x["labels"], reduction=reduction)

    ce = "torchtune's forward KL is the CE form −Σ P log Q (DistiLLM's), no temperature"
    # torchtune/modules/loss/kd_losses.py: ForwardKLLoss −Σ softmax(z_t)·log_softmax(z_s) (student ±inf zeroed),
    # ReverseKLLoss Σ Q(log Q − log P), SymmetricKLLoss r·FKL + (1−r)·RKL; Σ over labels != -100 / n_valid, 0 if none.
    cases = []
    for s in ("a", "b", "c"):
        cases += [
            Case("torchtune.modules.loss", {"cls": "ForwardKLLoss"}, s, "forward_kl(form='ce')",
                 f"ForwardKLLoss ↔ forward_kl(form='ce'); {ce}", fkl_ce),
            Case("torchtune.modules.loss", {"cls": "ForwardKLLoss"}, s, "forward_kl + teacher_entropy",
                 f"ForwardKLLoss ↔ our exact forward KL + the per-token mean teacher entropy H(P); {ce}",
                 lambda x: ce_form_forward_kl(x["student"], x["teacher"], x["labels"])),
            Case("torchtune.modules.loss", {"cls": "ReverseKLLoss"}, s, "reverse_kl",
                 "ReverseKLLoss ↔ reverse_kl (exact KL(Q‖P), T=1)", rkl),
            Case("torchtune.modules.loss", {"cls": "SymmetricKLLoss", "init": {"sym_kd_ratio": 0.3}}, s,
                 "0.3·forward_kl(form='ce') + 0.7·reverse_kl",
                 f"SymmetricKLLoss(sym_kd_ratio=r) ↔ r·forward_kl(form='ce') + (1−r)·reverse_kl; {ce}",
                 lambda x: 0.3 * fkl_ce(x) + 0.7 * rkl(x)),
        ]
    return [*cases,
            Case("torchtune.modules.loss", {"cls": "ForwardKLLoss", "normalize": False}, "b",
                 "forward_kl(form='ce', reduction='sum')", "normalize=False ↔ reduction='sum'",
                 lambda x: fkl_ce(x, "sum")),
            Case("torchtune.modules.loss", {"cls": "ReverseKLLoss", "normalize": False}, "b",
                 "reverse_kl(reduction='sum')", "normalize=False ↔ reduction='sum'", lambda x: rkl(x, "sum")),
            Case("torchtune.modules.loss", {"cls": "ForwardKLWithChunkedOutputLoss", "init": {"num_output_chunks": 3}},
                 "b", "forward_kl(form='ce')", f"the chunked loss over 3 sequence chunks ↔ forward_kl(form='ce'); {ce}",
                 fkl_ce),
            Case("torchtune.modules.loss", {"cls": "ReverseKLWithChunkedOutputLoss", "init": {"num_output_chunks": 3}},
                 "b", "reverse_kl", "the chunked loss over 3 sequence chunks ↔ reverse_kl", rkl),
            Case("torchtune.modules.loss", {"cls": "ForwardKLLoss"}, "empty", "forward_kl(form='ce')",
                 "no valid label: both give exactly 0", fkl_ce),
            Case("torchtune.modules.loss", {"cls": "ForwardKLLoss"}, "inf", "forward_kl(form='ce')",
                 "a -inf logit shared by both models: torchtune zeroes the student's ±inf entries, ours skips "
                 "entries infinite in either model; both give the loss over the finite vocabulary", fkl_ce),
            Case("torchtune.modules.loss", {"cls": "ReverseKLLoss"}, "inf", "reverse_kl",
                 "a -inf logit shared by both models: both skip the entries infinite in either model", rkl)]


def liger_cases() -> list[Case]:
    from reference_impls.losses.divergences import generalized_jsd as jsd
    from reference_impls.losses.divergences import hard_label_ce

    def ours(x: Tensors, b: float, t: float, hard: float) -> torch.Tensor:
        s, te = logits_of(x, "student"), logits_of(x, "teacher")
        return hard * hard_label_ce(s, x["labels"]) + (1 - hard) * jsd(s, te, x["labels"], beta=b, temperature=t)

    # liger_kernel/chunked_loss/jsd_loss.py::LigerFusedLinearJSDFunction.distillation_loss_fn (same three β cases
    # as TRL, rows with the ignore label zeroed) on fused_linear_distillation.py's chunks of x @ W.T ÷ T; the
    # soft and the hard (T=1 NLL) sums are divided by the global n_valid.clamp_min(1). compiled=False on CPU.
    opts = [(b, t, 0.0) for b in BETAS for t in (1.0, 2.0)] + [(0.5, 1.0, 0.5), (0.5, 2.0, 0.5)]
    return [Case("liger_kernel.chunked_loss.LigerFusedLinearJSDLoss",
                 {"beta": b, "temperature": t, "hard": h, "soft": 1 - h, "chunk_size": 4}, "h",
                 (f"{h}·hard_label_ce + {1 - h}·" if h else "") + f"generalized_jsd(h @ W.T, beta={b}, temperature={t})",
                 f"weight_hard_loss={h}, weight_soft_loss={1 - h}, beta={b}, temperature={t} ↔ "
                 + (f"{h}·hard_label_ce (T=1) + {1 - h}·" if h else "")
                 + f"generalized_jsd(beta={b}, temperature={t}) on logits h @ W.T; Liger's β convention is TRL's, "
                 "no T²",
                 lambda x, b=b, t=t, h=h: ours(x, b, t, h)) for b, t, h in opts]


def torchdistill_cases() -> list[Case]:
    from reference_impls.losses.divergences import forward_kl, vanilla_kd_loss

    # torchdistill/losses/mid_level.py::KDLoss(nn.KLDivLoss): KLDiv(log_softmax(z_s/T, dim=1), softmax(z_t/T, dim=1))
    # with batchmean = Σ / rows; alpha None/0 or no targets → that alone (no T²); else α·CE + (1−α)·T²·KL.
    cases = [Case("torchdistill.losses.mid_level.KDLoss", {"temperature": t, "alpha": 0.0, "targets": False}, s,
                  f"forward_kl(labels=None, temperature={t})",
                  f"KDLoss(temperature={t}, alpha=0) on [B·T, V] rows ↔ forward_kl(labels=None, temperature={t}): "
                  "batchmean over rows = our per-position mean; no T² when alpha=0; torchdistill masks nothing",
                  lambda x, t=t: forward_kl(x["student"], x["teacher"], temperature=t))
             for s in ("a", "c") for t in (1.0, 4.0)]
    return [*cases, Case("torchdistill.losses.mid_level.KDLoss", {"temperature": 2.0, "alpha": 0.3, "targets": True},
                         "c", "vanilla_kd_loss(temperature=2, alpha=0.7)",
                         "KDLoss(alpha=a) with targets ↔ vanilla_kd_loss(alpha=1−a): torchdistill's alpha weighs the "
                         "hard CE, ours the T²-scaled soft KL; equal only without -100 labels (torchdistill's KL "
                         "term is not masked)",
                         lambda x: vanilla_kd_loss(x["student"], x["teacher"], x["labels"], temperature=2.0, alpha=0.7))]


def textbrewer_cases() -> list[Case]:
    from reference_impls.losses.divergences import forward_kl

    # textbrewer/losses.py::kd_ce_loss: −(softmax(z_T/T)·log_softmax(z_S/T)).sum(-1).mean(), the CE form, no T²;
    # textbrewer/distiller_utils.py::select_logits_with_mask keeps the rows of logits_mask first.
    cases = [Case("textbrewer.losses.kd_ce_loss", {"temperature": t, "select": True}, s,
                  f"forward_kl(form='ce', temperature={t})",
                  f"kd_ce_loss(temperature={t}) on the rows kept by select_logits_with_mask(labels != -100) ↔ "
                  f"forward_kl(form='ce', temperature={t}); TextBrewer's KD loss is the CE form, no T²",
                  lambda x, t=t: forward_kl(x["student"], x["teacher"], x["labels"], temperature=t, form="ce"))
             for s in ("a", "b") for t in (1.0, 4.0)]
    return [*cases, Case("textbrewer.losses.kd_ce_loss", {"temperature": 4.0, "select": False}, "c",
                         "forward_kl(labels=None, form='ce', temperature=4)",
                         "kd_ce_loss without a mask (mean over every position) ↔ forward_kl(labels=None, form='ce')",
                         lambda x: forward_kl(x["student"], x["teacher"], temperature=4.0, form="ce"))]


PEERS = {  # in the order they are tried
    "trl": Peer("trl", "1.16.0", trl_cases),
    # torchtune 0.6.1 imports torchao and torchao.dtypes.nf4tensor, which torchao 0.18 no longer has.
    "torchtune": Peer("torchtune", "0.6.1", torchtune_cases, extra=("torchao==0.10.0",)),
    # Liger's declared triton is needed only by its Triton ops; the chunked losses are pure torch.
    "liger-kernel": Peer("liger-kernel", "0.8.5", liger_cases, no_deps=True),
    # torchdistill's losses import only torch (torchvision, scipy, ... serve its models and datasets).
    "torchdistill": Peer("torchdistill", "1.1.5", torchdistill_cases, no_deps=True),
    "textbrewer": Peer("textbrewer", "0.2.1.post1", textbrewer_cases, no_deps=True,
                       extra=("tqdm==4.70.1", "numpy==2.4.6", "tensorboard==2.21.0")),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, from: {', '.join(PEERS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "kdatlas" / "peers")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    tensors, rows, peers = make_inputs(), [], {}
    for name in names:
        peer = PEERS[name]
        print(f"[{name}] venv {args.cache}/{name}-{peer.version} (created if missing), running its cases ...", file=sys.stderr)
        peer_rows, peers[name] = run_peer(peer, args.cache, tensors)
        rows += peer_rows
        state = peers[name]
        print(f"[{name}] skipped: {state['reason']}" if state["status"] == "skipped"
              else f"[{name}] {state['cases']} cases, {state['failed']} failed", file=sys.stderr)
        for row in peer_rows:
            if not row["pass"]:
                print(f"  FAIL {row['ours']} vs {row['peer_function']} {row['peer_options']} on {row['inputs']}: "
                      f"max |diff| {row['max_abs_diff']} {row.get('error', '')}", file=sys.stderr)
    report = write_report(args.out, rows, peers)
    print(f"wrote {args.out}: {json.dumps(report['summary'])}", file=sys.stderr)
    return 1 if report["summary"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
