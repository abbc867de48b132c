"""Capacity-gap sweep on the embedded default: distilled-student quality vs student/teacher size.

    python benchmarks/capacity_gap.py [--sizes 0.1,0.2,0.4,0.6,0.8] [--steps 800] [--init pruned|random]
                                      [--importance gradient|activation|magnitude] [--quick] [--out DIR]

MiniMA (``zhang2025minima``) fixes the teacher and asks which student size it serves best; its
law (ACL 2025 version) puts the optimal teacher at about 2.5x the student, i.e. a student of
about 40% of the teacher. This script reproduces the *shape* of that experiment at toy scale on
one fixed teacher: for each fraction of the teacher's parameter count it

1. picks the Llama student shape (layers, width, heads, FFN) closest to that fraction;
2. builds the student by structured pruning of the cached embedded teacher
   (`reference_impls.common.pruning.prune_llama`, the paper's gradient importance by default),
   or, with ``--init random``, a fresh random initialisation of the same shape;
3. saves it with ``save_pretrained`` (plus the teacher's tokenizer) and runs the existing harness
   (`reference_impls.common.harness.run_recipe`) with forward-KL logit distillation, which also
   trains the cross-entropy baseline from the same initialisation;
4. records token KL to the teacher and exact match of baseline and distilled students.

All sizes run side by side in one process, on the same data and evaluation set. Writes
``capacity_gap.json``, ``capacity_gap.md`` and ``capacity_gap.png`` to ``--out``. Not run in
tests. At toy scale the curve says how pruning-init + distillation degrades with size on *this*
teacher; it cannot test the law itself, which needs a range of teacher sizes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.common.harness import RunConfig, run_recipe
from reference_impls.common.models import build_decoder, count_parameters
from reference_impls.common.pruning import IMPORTANCE_SCORES, prune_llama
from reference_impls.common.tasks import make_split
from reference_impls.common.teacher import load_or_train_teacher
from reference_impls.common.training import make_dataloader
from reference_impls.word_level_kd import forward_kl_recipe


def student_shape(teacher: PreTrainedModel, fraction: float) -> dict[str, int]:
    """The prunable shape whose parameter count is closest to ``fraction`` of the teacher's."""
    config = teacher.config
    target = fraction * count_parameters(teacher)
    head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
    ffn_ratio = config.intermediate_size / config.hidden_size
    best: tuple[float, dict[str, int]] | None = None
    for layers in range(1, config.num_hidden_layers + 1):
        for hidden in range(8, config.hidden_size + 1, 8):
            heads = max(1, min(config.num_attention_heads, round(hidden / head_dim)))
            if hidden % heads:
                continue  # LlamaConfig requires hidden_size to be a multiple of the heads
            shape = {
                "num_layers": layers,
                "hidden_size": hidden,
                "intermediate_size": min(config.intermediate_size, round(ffn_ratio * hidden)),
                "num_heads": heads,
                "num_kv_heads": heads,
            }
            per_layer = 4 * hidden * heads * head_dim + 3 * hidden * shape["intermediate_size"] + 2 * hidden
            size = (
                config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2)
                + layers * per_layer
                + hidden
            )
            gap = abs(size - target)
            if best is None or gap < best[0]:
                best = (gap, shape)
    assert best is not None
    return best[1]


def build_student(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    shape: dict[str, int],
    args: argparse.Namespace,
) -> PreTrainedModel:
    """Pruned from the teacher (MiniMA) or randomly initialised with the same shape."""
    examples = make_split("train", args.calibration_examples, seed=1)
    batches = make_dataloader(
        tokenizer, [e.prompt for e in examples], [e.response for e in examples], batch_size=16, shuffle=False
    )
    student = prune_llama(teacher, **shape, importance=args.importance, calibration_batches=batches)
    if args.init == "random":
        student = build_decoder(LlamaConfig.from_dict(student.config.to_dict()), args.seed)
    return student


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    torch.manual_seed(args.seed)
    teacher, tokenizer = load_or_train_teacher("cpu", progress=True)
    teacher_size = count_parameters(teacher)
    rows = []
    for fraction in args.sizes:
        shape = student_shape(teacher, fraction)
        started = time.perf_counter()
        student = build_student(teacher, tokenizer, shape, args)
        with tempfile.TemporaryDirectory() as folder:
            student.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            config = RunConfig(
                device="cpu",
                student=folder,
                steps=args.steps,
                sft_steps=args.sft_steps,
                seed=args.seed,
                eval_size=args.eval_size,
                train_size=args.train_size,
                progress=False,
            )
            result = run_recipe(forward_kl_recipe(), config)
        row = {
            "fraction": fraction,
            "ratio": count_parameters(student) / teacher_size,
            "parameters": count_parameters(student),
            **shape,
            "init": args.init,
            "seconds": time.perf_counter() - started,
        }
        for who in ("teacher", "baseline", "distilled"):
            row[f"{who}_kl"] = result.metrics[who]["token_kl_to_teacher"]
            row[f"{who}_em"] = result.metrics[who]["exact_match"]
        rows.append(row)
        print(
            f"ratio {row['ratio']:.2f} ({row['num_layers']}L/{row['hidden_size']}d/{row['num_heads']}h/"
            f"{row['intermediate_size']}ffn): KL baseline {row['baseline_kl']:.3f} distilled "
            f"{row['distilled_kl']:.3f}  EM baseline {row['baseline_em']:.3f} distilled {row['distilled_em']:.3f} "
            f"teacher {row['teacher_em']:.3f}  [{row['seconds']:.0f} s]",
            flush=True,
        )
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| size ratio | shape (L/d/h/ffn) | init | KL baseline | KL distilled | EM baseline | EM distilled | EM teacher |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ratio']:.2f} | {r['num_layers']}/{r['hidden_size']}/{r['num_heads']}/{r['intermediate_size']} "
            f"| {r['init']} | {r['baseline_kl']:.3f} | {r['distilled_kl']:.3f} | {r['baseline_em']:.3f} "
            f"| {r['distilled_em']:.3f} | {r['teacher_em']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r["ratio"] for r in rows]
    figure, (kl, em) = plt.subplots(1, 2, figsize=(9, 3.5))
    for who, style in (("baseline", "o--"), ("distilled", "o-")):
        kl.plot(ratios, [r[f"{who}_kl"] for r in rows], style, label=who)
        em.plot(ratios, [r[f"{who}_em"] for r in rows], style, label=who)
    em.axhline(rows[0]["teacher_em"], color="gray", linestyle=":", label="teacher")
    kl.set(xlabel="student / teacher parameters", ylabel="token KL to teacher")
    em.set(xlabel="student / teacher parameters", ylabel="exact match")
    for axis in (kl, em):
        axis.legend()
    figure.suptitle(f"Capacity-gap sweep ({rows[0]['init']} init, forward-KL distillation)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="0.1,0.2,0.4,0.6,0.8", help="fractions of the teacher's parameters"
    )
    parser.add_argument("--steps", type=int, default=800, help="distillation (and baseline) steps per size")
    parser.add_argument(
        "--sft-steps", type=int, default=0, help="shared warm start; 0 distils the init directly"
    )
    parser.add_argument("--init", choices=("pruned", "random"), default="pruned")
    parser.add_argument("--importance", choices=IMPORTANCE_SCORES, default="gradient")
    parser.add_argument("--calibration-examples", type=int, default=128)
    parser.add_argument("--eval-size", type=int, default=210)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two sizes, 20 steps, small eval: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/capacity_gap"))
    args = parser.parse_args()
    args.sizes = [float(s) for s in args.sizes.split(",")]
    if args.quick:
        args.sizes, args.steps, args.eval_size, args.train_size, args.calibration_examples = (
            [0.2, 0.5],
            20,
            30,
            200,
            32,
        )
    started = time.perf_counter()
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "capacity_gap.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    (args.out / "capacity_gap.md").write_text(table(rows) + "\n")
    plot(rows, args.out / "capacity_gap.png")
    print(table(rows))
    print(f"total {time.perf_counter() - started:.0f} s; wrote {args.out}/capacity_gap.{{json,md,png}}")


if __name__ == "__main__":
    main()
