"""Memory and time of the fused distillation loss vs the naive full-logits loss (vs Liger).

Forward + backward of generalized JSD (beta = 0.5 by default) from hidden states and LM heads:

* ``naive``: full ``[N, V]`` logits of both models, then the TRL-style formula with torch ops
  (log-softmax, a ``logsumexp`` mixture, two ``kl_div(log_target=True)``), autograd backward;
* ``fused``: ``reference_impls.losses.fused.fused_linear_divergence`` (eager);
* ``fused-compiled``: the same with ``compile=True``;
* ``liger``: Liger-Kernel's ``LigerFusedLinearJSDLoss``, only when ``liger_kernel`` imports and a
  GPU is present.
An implementation name may end in ``@MiB`` to set the fused chunk budget (``fused-compiled@2048``).

Peak extra memory: on GPU, ``torch.cuda.max_memory_allocated`` minus the memory held before the
call (inputs), over one forward + backward after a warm-up. On CPU each (case, implementation)
runs in a fresh subprocess that reports the growth of the process's peak resident set (VmHWM,
reset through ``/proc/self/clear_refs`` after the warm-up and a ``malloc_trim``) over the timed
iterations above the resident set before them: it captures every torch CPU allocation, which go
through malloc. Time: the median of ``--repeats`` timed forward + backward passes after
``--warmup`` untimed ones (CUDA events on GPU).

Only torch (+ optional triton/liger) and this repository's ``reference_impls.losses`` /
``reference_impls.losses.fused`` are imported, so it runs on a bare GPU machine from the repo root:

    PYTHONPATH=. python benchmarks/fused_loss.py --device cuda --json out.json --markdown out.md

The default (CPU) run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reference_impls.losses.fused import fused_linear_divergence

GiB = 2**30
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
CPU_GRID = "1024x8192,4096x32768"
GPU_GRID = "4096x32000,8192x128256,16384x151936"


# --- the implementations --------------------------------------------------------------------------


def naive_jsd(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    labels: Tensor,
    beta: float,
) -> Tensor:
    """Full logits and the generalized JSD as TRL's GKD writes it (mixture by logsumexp)."""
    student_logits = student_hidden @ student_weight.T
    with torch.no_grad():
        teacher_logits = teacher_hidden @ teacher_weight.T
    student_log_probs = F.log_softmax(student_logits.float(), dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float(), dim=-1)
    mixture = torch.logsumexp(
        torch.stack([student_log_probs + math.log(1 - beta), teacher_log_probs + math.log(beta)]), dim=0
    )
    kl_teacher = F.kl_div(mixture, teacher_log_probs, reduction="none", log_target=True)
    kl_student = F.kl_div(mixture, student_log_probs, reduction="none", log_target=True)
    per_token = (beta * kl_teacher + (1 - beta) * kl_student).sum(-1)
    mask = labels != -100
    return per_token[mask].sum() / mask.sum().clamp_min(1)


def make_loss(impl: str, beta: float) -> Callable[..., Tensor]:
    """The loss callable ``(hs, ws, ht, wt, labels) -> scalar`` for an implementation name."""
    name, _, budget = impl.partition("@")
    budget_bytes = int(budget) * 2**20 if budget else None
    if name == "naive":
        return lambda hs, ws, ht, wt, y: naive_jsd(hs, ws, ht, wt, y, beta)
    if name in ("fused", "fused-compiled"):
        compiled = name == "fused-compiled"
        return lambda hs, ws, ht, wt, y: fused_linear_divergence(
            hs,
            ws,
            ht,
            wt,
            y,
            "generalized_jsd",
            beta=beta,
            compile=compiled,
            memory_budget_bytes=budget_bytes,
        )
    if name == "liger":
        import inspect

        from liger_kernel.transformers import LigerFusedLinearJSDLoss  # optional, GPU only

        # Soft term only (no hard-label CE), the same beta; the keyword names changed across versions.
        accepted = inspect.signature(LigerFusedLinearJSDLoss.__init__).parameters
        options = {"weight_hard_loss": 0.0, "weight_soft_loss": 1.0, "beta": beta, "jsd_beta": beta}
        module = LigerFusedLinearJSDLoss(**{k: v for k, v in options.items() if k in accepted})
        return lambda hs, ws, ht, wt, y: module(hs, ws, ht, wt, y)
    raise ValueError(f"unknown implementation {impl!r}")


def make_inputs(
    n: int, vocab: int, hidden_student: int, hidden_teacher: int, dtype: torch.dtype, device: str
) -> tuple[Tensor, ...]:
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, scale: float) -> Tensor:
        return (torch.randn(*shape, generator=generator, device=device) * scale).to(dtype)

    hs = randn(n, hidden_student, scale=1.0).requires_grad_()
    ws = randn(vocab, hidden_student, scale=hidden_student**-0.5).requires_grad_()
    ht = randn(n, hidden_teacher, scale=1.0)
    wt = randn(vocab, hidden_teacher, scale=hidden_teacher**-0.5)
    labels = torch.randint(0, vocab, (n,), generator=generator, device=device)
    labels[: n // 8] = -100  # a prompt share that is masked
    return hs, ws, ht, wt, labels


def step(loss_fn: Callable[..., Tensor], inputs: tuple[Tensor, ...]) -> float:
    hs, ws = inputs[0], inputs[1]
    hs.grad = ws.grad = None
    loss = loss_fn(*inputs)
    loss.backward()
    return float(loss.detach())


# --- measuring one case -------------------------------------------------------------------------------


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_free_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_cpu(
    loss_fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], warmup: int, repeats: int
) -> dict:
    for _ in range(warmup):
        step(loss_fn, inputs)
    inputs[0].grad = inputs[1].grad = None
    _release_free_heap()
    before = _rss_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current RSS
    times, loss = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        loss = step(loss_fn, inputs)
        times.append(time.perf_counter() - start)
    peak = _rss_bytes("VmHWM") - before
    return {"peak_bytes": peak, "time_s": statistics.median(times), "loss": loss}


def measure_cuda(
    loss_fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], warmup: int, repeats: int
) -> dict:
    for _ in range(warmup):
        step(loss_fn, inputs)
    inputs[0].grad = inputs[1].grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = step(loss_fn, inputs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(loss_fn, inputs)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return {"peak_bytes": peak, "time_s": statistics.median(times), "loss": loss}


def run_case(case: dict[str, Any], impl: str, args: argparse.Namespace) -> dict[str, Any]:
    """One (case, implementation) in this process; errors and OOM are recorded, not raised."""
    result: dict[str, Any] = {**case, "impl": impl}
    inputs: tuple[Tensor, ...] = ()
    try:
        inputs = make_inputs(
            case["n"],
            case["vocab"],
            args.hidden_student,
            args.hidden_teacher,
            DTYPES[args.dtype],
            args.device,
        )
        loss_fn = make_loss(impl, args.beta)
        measure = measure_cuda if args.device == "cuda" else measure_cpu
        result.update(measure(loss_fn, inputs, args.warmup, args.repeats))
    except torch.cuda.OutOfMemoryError:
        result["error"] = "OOM"
    except Exception as error:  # recorded in the table: one failing implementation must not stop the run
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    finally:
        del inputs
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return result


def run_case_in_subprocess(case: dict[str, Any], impl: str, args: argparse.Namespace) -> dict[str, Any]:
    """CPU: a fresh process per measurement, so that peaks do not mask each other."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        json.dumps({"case": case, "impl": impl}),
        *_shared_flags(args),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _repo_root()}
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**case, "impl": impl, "error": f"worker exit {done.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def _repo_root() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return [
        f"--device={args.device}",
        f"--dtype={args.dtype}",
        f"--hidden-student={args.hidden_student}",
        f"--hidden-teacher={args.hidden_teacher}",
        f"--beta={args.beta}",
        f"--warmup={args.warmup}",
        f"--repeats={args.repeats}",
        f"--threads={args.threads}",
    ]


# --- reporting --------------------------------------------------------------------------------------


def machine_name(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads (torch {torch.__version__}, CPU)"


def _fmt_result(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    if "error" in r:
        return r["error"]
    text = f"{r['peak_bytes'] / GiB:.2f} GiB, {r['time_s'] * 1000:.1f} ms"
    if base and "error" not in base and base is not r:
        text += f" ({r['peak_bytes'] / max(base['peak_bytes'], 1):.2f}× mem, {r['time_s'] / base['time_s']:.2f}× time)"
    return text


def markdown_table(results: list[dict[str, Any]], impls: list[str], header: str) -> str:
    cases = sorted({(r["n"], r["vocab"]) for r in results})
    lines = [header, "", "| N × V | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
    for n, vocab in cases:
        row = {r["impl"]: r for r in results if (r["n"], r["vocab"]) == (n, vocab)}
        base = row.get("naive")
        cells = [_fmt_result(row[i], base) if i in row else "—" for i in impls]
        lines.append(f"| {n} × {vocab} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: peak extra memory, median forward + backward time (ratios to naive).")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], impls: list[str], path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot written")
        return
    cases = sorted({(r["n"], r["vocab"]) for r in results})
    labels = [f"{n}×{v}" for n, v in cases]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        by_case = {(r["n"], r["vocab"]): r for r in results if r["impl"] == impl and "error" not in r}
        xs = [i + k * width for i, c in enumerate(cases) if c in by_case]
        axes[0].bar(xs, [by_case[c]["peak_bytes"] / GiB for c in cases if c in by_case], width, label=impl)
        axes[1].bar(xs, [by_case[c]["time_s"] * 1000 for c in cases if c in by_case], width, label=impl)
    for ax, ylabel in zip(axes, ("peak extra memory (GiB)", "forward + backward (ms)"), strict=True):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], labels)
        ax.set_xlabel("tokens N × vocabulary V")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


# --- main -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on GPU, fp32 on CPU"
    )
    parser.add_argument("--grid", default=None, help=f"NxV,... (default CPU {CPU_GRID}; GPU {GPU_GRID})")
    parser.add_argument(
        "--impls", default=None, help="comma list (default: naive,fused,fused-compiled[,liger])"
    )
    parser.add_argument("--hidden-student", type=int, default=None, help="default 2048 on GPU, 256 on CPU")
    parser.add_argument("--hidden-teacher", type=int, default=None, help="default 4096 on GPU, 512 on CPU")
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--warmup", type=int, default=None, help="default 2 on GPU, 1 on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 on GPU, 3 on CPU")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    args.grid = args.grid or (GPU_GRID if gpu else CPU_GRID)
    args.hidden_student = args.hidden_student or (2048 if gpu else 256)
    args.hidden_teacher = args.hidden_teacher or (4096 if gpu else 512)
    args.warmup = args.warmup if args.warmup is not None else (2 if gpu else 1)
    args.repeats = args.repeats or (5 if gpu else 3)
    if args.impls is None:
        impls = ["naive", "fused", "fused-compiled"]
        if gpu and _liger_importable():
            impls.append("liger")
        args.impls = ",".join(impls)
    return args


def _liger_importable() -> bool:
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def _configure(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    # Several shapes (one per case and chunk budget) are compiled: keep them all cached.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _configure(args)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(run_case(job["case"], job["impl"], args)))
        return
    impls = args.impls.split(",")
    cases = [{"n": int(n), "vocab": int(v)} for n, v in (c.lower().split("x") for c in args.grid.split(","))]
    header = (
        f"Generalized JSD (β = {args.beta}), forward + backward, {args.dtype}, student hidden "
        f"{args.hidden_student}, teacher hidden {args.hidden_teacher}; {machine_name(args.device)}"
    )
    print(header)
    results = []
    for case in cases:
        for impl in impls:
            runner = run_case if args.device == "cuda" else run_case_in_subprocess
            started = time.perf_counter()
            result = runner(case, impl, args)
            results.append(result)
            base = next(
                (
                    r
                    for r in results
                    if r["impl"] == "naive" and r["n"] == case["n"] and r["vocab"] == case["vocab"]
                ),
                None,
            )
            print(
                f"N={case['n']:>6} V={case['vocab']:>7} {impl:>20}: {_fmt_result(result, base)}"
                f"   [{time.perf_counter() - started:.0f} s incl. setup]",
                flush=True,
            )
    table = markdown_table(results, impls, header)
    print()
    print(table)
    if args.json:
        payload = {"machine": machine_name(args.device), "args": vars(args), "results": results}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.plot:
        plot(results, impls, args.plot, header)


if __name__ == "__main__":
    main()
