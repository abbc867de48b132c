"""``kdatlas run ID``: build a method's recipe, run it, and write the run directory.

The training itself is `reference_impls.run.run_recipe`; this module turns command
line values into a recipe and a run config, prints the comparison table, and writes

- ``config.json``: the fully resolved configuration (method, hyper-parameters, models, budget);
- ``metrics.json``: ``{"teacher": {...}, "baseline": {...}, "distilled": {...}}``, metric → value;
- ``curves.png`` and ``curves.json``: the training losses of the baseline and distilled students;
- ``student/``: the distilled student as a Hugging Face checkpoint (``save_pretrained``, with its
  tokenizer) and its model card (``README.md``: method, hyper-parameters, teacher, data, results,
  papers, the command that reproduces it);
- ``request.json`` (written first): the method, overrides, source and run config asked for, which
  ``kdatlas run --resume DIR`` reads back;
- ``checkpoints/`` while it trains (`reference_impls.core.checkpoints`; removed when the run ends,
  unless kept), and ``logs/`` when a tracker such as TensorBoard is installed.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

METRIC_LABELS = {
    "exact_match": "exact match ↑",
    "token_kl_to_teacher": "token KL(teacher‖student) ↓",
    "token_reverse_kl_to_teacher": "token KL(student‖teacher) ↓",
    "token_tvd_to_teacher": "token TVD to teacher ↓",
    "rouge_l": "ROUGE-L ↑",
    "oracle_kl": "KL(oracle‖model), golden ↓",
    "attack_success_rate": "attack success rate ↓",
    "ood_exact_match": "OOD exact match ↑",
    "ood_rouge_l": "OOD ROUGE-L ↑",
}


class RunError(Exception):
    """A run that cannot start: unknown method, bad override, unloadable model or data."""


def _coerce(name: str, raw: str, default: Any) -> Any:
    """Convert a ``--set`` value to the type of the hyper-parameter's default."""
    try:
        if isinstance(default, bool):
            if raw.lower() not in {"true", "false", "1", "0"}:
                raise ValueError(raw)
            return raw.lower() in {"true", "1"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise RunError(f"--set {name}={raw}: expected a {type(default).__name__} like {default!r}") from None
    return raw


def build_recipe(method_id: str, overrides: dict[str, str]) -> Any:
    """The method's recipe with ``overrides`` applied (strings converted to the defaults' types)."""
    from reference_impls.registry import get_method

    try:
        registration = get_method(method_id)
    except KeyError as error:
        raise RunError(str(error.args[0])) from None
    defaults = registration.defaults()
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
        raise RunError(
            f"{method_id} has no hyper-parameter {', '.join(unknown)}. Its hyper-parameters: {known}"
        )
    values = {name: _coerce(name, raw, defaults[name]) for name, raw in overrides.items()}
    try:
        recipe = registration.build_recipe(**values)
        _probe(recipe)
    except ValueError as error:
        raise RunError(f"{method_id}: {error}") from None
    return recipe


def with_source(recipe: Any, spec: str) -> Any:
    """``recipe`` with its data replaced by the source ``spec`` names (see `parse_source`)."""
    from dataclasses import replace

    from reference_impls.core.data_sources import DataSource, parse_source
    from reference_impls.core.training import StepLoss

    if not isinstance(recipe.data, DataSource) or isinstance(recipe.loss, StepLoss):
        raise RunError(
            f"'{recipe.method_id}' defines its own sampling and training step or data pipeline; --source applies to "
            "token-level objectives (e.g. forward-kl, reverse-kl, generalized-jsd, skew-forward-kl)"
        )
    try:
        return replace(recipe, data=parse_source(spec))
    except ValueError as error:
        raise RunError(str(error)) from None


def _probe(recipe: Any) -> None:
    """Call a logits objective once on a tiny batch, so out-of-range hyper-parameters fail now, not
    after minutes of teacher training (step losses and pipelines check theirs when built)."""
    import torch

    from reference_impls.core.training import StepLoss

    if isinstance(recipe.loss, StepLoss):
        return
    logits = torch.zeros(1, 2, 4)
    recipe.loss(logits, logits.clone(), torch.zeros(1, 2, dtype=torch.long))


def default_run_dir(method_id: str) -> Path:
    """``runs/<id>-<YYYYmmdd-HHMMSS>`` in the current directory."""
    return Path("runs") / f"{method_id}-{time.strftime('%Y%m%d-%H%M%S')}"


def _shared_run_dir(method_id: str, config: Any) -> Path:
    """`default_run_dir`, the same on every process of a distributed launch (the main one's)."""
    from accelerate.utils import broadcast_object_list

    from reference_impls.run.setup import distributed_state

    names = [str(default_run_dir(method_id))]
    if distributed_state(config).num_processes > 1:
        broadcast_object_list(names)
    return Path(names[0])


def comparison_table(method_id: str, metrics: dict[str, dict[str, float]]) -> Table:
    """The teacher / baseline / distilled comparison as a rich table."""
    table = Table(title=f"{method_id}: held-out test split", title_justify="left")
    table.add_column("metric")
    for column in ("teacher", "baseline student", "distilled student"):
        table.add_column(column, justify="right")
    roles = ("teacher", "baseline", "distilled")
    for name in dict.fromkeys(name for role in roles for name in metrics[role]):
        label = METRIC_LABELS.get(name, name)
        row = [metrics[role].get(name) for role in ("teacher", "baseline", "distilled")]
        table.add_row(label, *("—" if value is None else f"{value:.4f}" for value in row))
    return table


def verdict(metrics: dict[str, dict[str, float]]) -> str:
    """One honest sentence: did distillation bring the student closer to the teacher, and by which KL?"""
    closer, farther = [], []
    measures = (
        ("token_kl_to_teacher", "forward KL"),
        ("token_reverse_kl_to_teacher", "reverse KL"),
        ("token_tvd_to_teacher", "TVD"),
    )
    for name, label in measures:
        baseline, distilled = metrics["baseline"].get(name), metrics["distilled"].get(name)
        if baseline is None or distilled is None:
            continue
        (closer if distilled < baseline else farther).append(f"{label} {distilled:.4f} vs {baseline:.4f}")
    if closer and not farther:
        return f"The distilled student is closer to the teacher than the baseline ({'; '.join(closer)})."
    if closer:
        return (
            f"The distilled student is closer to the teacher by {'; '.join(closer)}, "
            f"but not by {'; '.join(farther)} (distilled vs baseline)."
        )
    if farther:
        return f"The distilled student is NOT closer to the teacher than the baseline here ({'; '.join(farther)})."
    scores = [
        (label, metrics["baseline"][name], metrics["distilled"][name])
        for name, label in (("exact_match", "exact match"), ("rouge_l", "ROUGE-L"))
        if name in metrics["baseline"] and name in metrics["distilled"]
    ]
    if not scores:
        return ""
    compared = "; ".join(
        f"{label} {distilled:.4f} vs {baseline:.4f}" for label, baseline, distilled in scores
    )
    better = all(distilled > baseline for _, baseline, distilled in scores)
    worse = all(distilled < baseline for _, baseline, distilled in scores)
    outcome = "better than" if better else "worse than" if worse else "mixed against"
    return (
        "Distances to the teacher are undefined across vocabularies; on the task metrics the "
        f"distilled student is {outcome} the baseline (distilled vs baseline: {compared})."
    )


def pipeline_counts(method_id: str, counts: dict[str, Any]) -> Table:
    """What the data pipeline asked of the teacher and what its filters kept (from its stats)."""
    table = Table(title=f"{method_id}: data pipeline", title_justify="left")
    table.add_column("step")
    table.add_column("count", justify="right")
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        table.add_row(name.replace("_", " "), f"{value:,}" if isinstance(value, int) else f"{value:.4f}")
    return table


def pipeline_verdict(metrics: dict[str, dict[str, float]]) -> str:
    """One honest sentence for a black-box run: exact match of the distilled student against the
    seed-only baseline, with the teacher for reference."""
    teacher, baseline, distilled = (
        metrics[role]["exact_match"] for role in ("teacher", "baseline", "distilled")
    )
    outcome = (
        "better than" if distilled > baseline else "worse than" if distilled < baseline else "level with"
    )
    return (
        f"The distilled student is {outcome} the seed-only baseline in exact match "
        f"({distilled:.4f} vs {baseline:.4f}; teacher {teacher:.4f})."
    )


def plot_curves(curves: dict[str, list[float]], path: Path, title: str) -> None:
    """A small PNG of the training losses (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    # The two curves are different losses (cross-entropy vs the method's objective): say so.
    labels = {"baseline": "baseline (cross-entropy)", "distilled": "distilled (method objective)"}
    for name, values in curves.items():
        axis.plot(range(1, len(values) + 1), values, label=labels.get(name, name), linewidth=1.2)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_run_dir(out: Path, result: Any) -> None:
    """Write config.json, metrics.json, curves.json, seconds.json and curves.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(
        json.dumps(result.config, indent=2, default=str) + "\n", encoding="utf-8"
    )
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n", encoding="utf-8")
    (out / "curves.json").write_text(json.dumps(result.curves) + "\n", encoding="utf-8")
    (out / "seconds.json").write_text(json.dumps(result.seconds, indent=2) + "\n", encoding="utf-8")
    plot_curves(result.curves, out / "curves.png", f"{result.config.get('method_id', '')} — training loss")


def write_data(path: Path, examples: Any) -> None:
    """A pipeline's distilled training data as JSONL: ``{"segments": [[text, supervised], ...]}``."""
    lines = [json.dumps({"segments": [list(s) for s in e.segments]}) for e in examples]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


REQUEST = "request.json"


def write_request(out: Path, method_id: str, overrides: dict[str, str], source: str | None, config: Any) -> None:
    """What was asked for, so that ``--resume`` runs exactly it again (JSON, written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    request = {"method_id": method_id, "overrides": overrides, "source": source, "config": asdict(config)}
    staging = out / f".{REQUEST}"
    staging.write_text(json.dumps(request, indent=2) + "\n", encoding="utf-8")
    staging.replace(out / REQUEST)


def read_request(run_dir: Path) -> tuple[str, dict[str, str], str | None, Any]:
    """``(method_id, overrides, source, config)`` of the run started in ``run_dir``.

    Raises:
        RunError: No run was started there, or its ``request.json`` is not one this version reads.
    """
    from reference_impls.core.recipe import RunConfig

    path = run_dir / REQUEST
    if not path.is_file():
        raise RunError(f"{run_dir} holds no {REQUEST}: it is not a run directory of `kdatlas run` (nothing to resume)")
    try:
        request = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(RunConfig)}
        unknown = sorted(set(request["config"]) - known)
        if unknown:
            raise RunError(f"{path}: unknown run options {', '.join(unknown)} (written by another kdatlas version?)")
        overrides = {str(k): str(v) for k, v in request["overrides"].items()}
        config = request["config"] | {"eval_data": tuple(request["config"].get("eval_data", ()))}  # JSON has no tuples
        return str(request["method_id"]), overrides, request["source"], RunConfig(**config)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise RunError(f"{path} is damaged ({error}); start a new run") from None


def run_method(
    method_id: str,
    config: Any = None,
    *,
    out: Path | None = None,
    overrides: dict[str, str] | None = None,
    source: str | None = None,
    console: Console | None = None,
    keep_checkpoints: bool = False,
    **run_options: Any,
) -> Any:
    """Run ``method_id`` end to end and write its run directory; returns the `RunResult`.

    ``config`` is a `reference_impls.core.recipe.RunConfig` (default: the embedded setting);
    ``run_options`` go to `reference_impls.run.run_recipe` unchanged (tests pass a few-step
    ``teacher_recipe`` or a ready ``teacher``). ``source`` replaces the recipe's data source (the
    second axis), e.g. ``"mixed:0.5"``: any token-level objective runs on any source.

    The run checkpoints its training into ``out/checkpoints`` (unless ``config.checkpoint_dir``
    names another folder) and resumes from what is there: running again into the same ``out``
    after a kill continues where it stopped (`resume_run`). The checkpoints are removed when the
    run has written its results, unless ``keep_checkpoints``.
    """
    import transformers

    from kdatlas.model_card import save_student
    from reference_impls.core.recipe import RunConfig
    from reference_impls.run import run_recipe

    console = console or Console()
    recipe = build_recipe(method_id, overrides or {})
    if source is not None:
        recipe = with_source(recipe, source)
    config = config or RunConfig()
    out = out or _shared_run_dir(method_id, config)
    config = replace(
        config,
        checkpoint_dir=config.checkpoint_dir or str(out / "checkpoints"),
        logging_dir=config.logging_dir or str(out / "logs"),
    )
    # Our own progress bars tell the story; transformers' per-load bars would interleave with them.
    transformers.logging.disable_progress_bar()
    try:
        from reference_impls.run.setup import check_device, distributed_state

        check_device(config)
        if distributed_state(config).is_main_process:
            write_request(out, method_id, overrides or {}, source, config)
        result = run_recipe(recipe, config, **run_options)
    except (FileNotFoundError, OSError, ValueError) as error:
        raise RunError(str(error)) from None
    if not result.metrics:  # a non-main process of a distributed launch
        return result
    write_run_dir(out, result)
    files = ["config.json", "metrics.json", "curves.png", "seconds.json"]
    if save_student(out, result) is not None:  # the distilled model, loadable with from_pretrained
        files.insert(0, "student/ (model, tokenizer, README.md model card)")
    if "pipeline" in result.config:  # a black-box pipeline: what it asked and kept, and its data
        write_data(out / "data.jsonl", result.data)
        files.append("data.jsonl")
        console.print(pipeline_counts(method_id, result.config["pipeline"]))
    console.print(comparison_table(method_id, result.metrics))
    sentence = pipeline_verdict(result.metrics) if "pipeline" in result.config else verdict(result.metrics)
    if sentence:
        console.print(sentence)
    if not keep_checkpoints and Path(config.checkpoint_dir) == out / "checkpoints":
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the results are written: nothing to resume
    console.print(f"[dim]run directory: {out} ({', '.join(files)})[/]")
    return result


def resume_run(run_dir: Path, *, progress: bool = True, console: Console | None = None, **options: Any) -> Any:
    """Continue the run started in ``run_dir`` from its checkpoints (``kdatlas run --resume``):
    the same method, overrides, source and config as asked for then.

    Raises:
        RunError: Not a run directory, or a run that has finished (its results are there).
    """
    method_id, overrides, source, config = read_request(run_dir)
    if (run_dir / "metrics.json").exists():
        raise RunError(f"the run in {run_dir} has finished (see its metrics.json and student/): nothing to resume")
    config = replace(config, progress=progress)
    return run_method(method_id, config, out=run_dir, overrides=overrides, source=source, console=console, **options)
