"""Capacity-gap sweep on the embedded default: distilled-student quality vs student/teacher size.

    python benchmarks/capacity_gap.py [--sizes 0.1,0.2,0.4,0.6,0.8] [--steps 800] [--inits pruned,random]
                                      [--importance gradient|activation|magnitude] [--quick] [--out DIR]

MiniMA (``zhang2025minima``) fixes the teacher and asks which student size it serves best; its
law (ACL 2025 version) puts the optimal teacher at about 2.5x the student, i.e. a student of
about 40% of the teacher. This script reproduces the *shape* of that experiment at toy scale on
one fixed teacher: for each fraction of the teacher's parameter count it

1. picks the Llama student shape (layers, width, heads, FFN) closest to that fraction;
2. builds the student by structured pruning of the cached embedded teacher
   (`reference_impls.white_box.pruning.prune_llama`, the paper's gradient importance by default),
   and, as the control, a fresh random initialisation of the same shape (``--inits``);
3. runs the harness (`reference_impls.run.run_recipe`) with the `minima` recipe
   (forward-KL logit distillation), which also trains the cross-entropy baseline from the same
   initialisation;
4. records token KL to the teacher and exact match of baseline and distilled students.

All sizes run side by side in one process, on the same data and evaluation set. Writes
``capacity_gap.json``, ``capacity_gap.md`` and ``capacity_gap.png`` to ``--out``. Not run in
tests. At toy scale the curve says how pruning-init + distillation degrades with size on *this*
teacher; it cannot test the law itself, which needs a range of teacher sizes.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import LlamaConfig, PreTrainedModel

from reference_impls.core.models import build_decoder, count_parameters
from reference_impls.registry import get_method
from reference_impls.run import RunConfig, run_recipe
from reference_impls.teachers.embedded import load_or_train_teacher
from reference_impls.white_box.pruning import IMPORTANCE_SCORES, prune_llama, student_shape


@dataclass(frozen=True)
class RandomOfShape:
    """A randomly initialised student with the shape MiniMA's pruning would give (the control)."""

    size_ratio: float

    def __call__(
        self, teacher: PreTrainedModel, tokenizer: object, train: object, seed: int
    ) -> PreTrainedModel:
        shape = student_shape(teacher, self.size_ratio)
        pruned = prune_llama(teacher, **shape, importance="magnitude")  # only its config is used
        return build_decoder(LlamaConfig.from_dict(pruned.config.to_dict()), seed)

    def describe(self) -> dict[str, object]:
        return {"builder": "random-of-pruned-shape", "size_ratio": self.size_ratio}


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    teacher, _ = load_or_train_teacher("cpu", progress=True)
    teacher_size = count_parameters(teacher)
    rows = []
    for fraction in args.sizes:
        shape = student_shape(teacher, fraction)
        for init in args.inits:
            recipe = get_method("minima").build_recipe(size_ratio=fraction, importance=args.importance)
            if init == "random":
                recipe = replace(recipe, students=replace(recipe.students, build=RandomOfShape(fraction)))
            started = time.perf_counter()
            config = RunConfig(
                device="cpu",
                steps=args.steps,
                sft_steps=args.sft_steps,
                seed=args.seed,
                eval_size=args.eval_size,
                train_size=args.train_size,
                progress=False,
            )
            result = run_recipe(recipe, config)
            parameters = result.config["student"]["parameters"]
            row = {
                "fraction": fraction,
                "ratio": parameters / teacher_size,
                "parameters": parameters,
                **shape,
                "init": init,
                "seconds": time.perf_counter() - started,
            }
            for who in ("teacher", "baseline", "distilled"):
                row[f"{who}_kl"] = result.metrics[who]["token_kl_to_teacher"]
                row[f"{who}_em"] = result.metrics[who]["exact_match"]
            rows.append(row)
            print(
                f"ratio {row['ratio']:.2f} {init:>6} ({row['num_layers']}L/{row['hidden_size']}d/{row['num_heads']}h/"
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

    figure, (kl, em) = plt.subplots(1, 2, figsize=(9, 3.5))
    for init in sorted({r["init"] for r in rows}):
        part = [r for r in rows if r["init"] == init]
        ratios = [r["ratio"] for r in part]
        for who, style in (("baseline", "o--"), ("distilled", "o-")):
            kl.plot(ratios, [r[f"{who}_kl"] for r in part], style, label=f"{who} ({init} init)")
            em.plot(ratios, [r[f"{who}_em"] for r in part], style, label=f"{who} ({init} init)")
    em.axhline(rows[0]["teacher_em"], color="gray", linestyle=":", label="teacher")
    kl.set(xlabel="student / teacher parameters", ylabel="token KL to teacher")
    em.set(xlabel="student / teacher parameters", ylabel="exact match")
    for axis in (kl, em):
        axis.legend()
    figure.suptitle("Capacity-gap sweep on the embedded teacher (forward-KL distillation)")
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
    parser.add_argument(
        "--inits", default="pruned,random", help="student initialisations compared side by side"
    )
    parser.add_argument("--importance", choices=IMPORTANCE_SCORES, default="gradient")
    parser.add_argument("--eval-size", type=int, default=210)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two sizes, 20 steps, small eval: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/capacity_gap"))
    args = parser.parse_args()
    args.sizes = [float(s) for s in args.sizes.split(",")]
    args.inits = args.inits.split(",")
    if args.quick:
        args.sizes, args.steps, args.eval_size, args.train_size = [0.2, 0.5], 20, 30, 200
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
