"""The model card written beside a distilled student (``README.md``, as on the Hugging Face Hub).

It says what a user of the checkpoint needs to know and to cite: the method and its
hyper-parameters, the teacher, the data, the held-out results against the baseline and the
teacher, the papers (with their arXiv ids or DOIs, from the project's verified bibliography) and
the command that reproduces the run. Everything in it comes from the run's own record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRIC_ORDER = ("exact_match", "rouge_l", "token_kl_to_teacher", "token_reverse_kl_to_teacher", "token_tvd_to_teacher")


def _papers(method_id: str) -> tuple[str, list[str]]:
    """The entry's name and one formatted reference per paper; empty outside a repository."""
    from kdatlas.bib import load_bibliography
    from kdatlas.repo import RepositoryNotFound, find_repository
    from kdatlas.taxonomy import load_taxonomy

    try:
        root = find_repository()
    except RepositoryNotFound:
        return method_id, []
    taxonomy, _ = load_taxonomy(root)
    entry = taxonomy.entries.get(method_id)
    if entry is None:
        return method_id, []
    bibliography, _ = load_bibliography(root)
    papers = [f"{bibliography.text(key)} (`{key}`)" for key in entry.papers if key in bibliography.entries]
    return entry.name, papers


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(result: Any) -> str:
    """Markdown with Hub front matter for the distilled student of ``result`` (a `RunResult`)."""
    config, metrics = result.config, result.metrics
    method_id = config["method_id"]
    name, papers = _papers(method_id)
    run = config.get("run", {})
    names = [m for m in METRIC_ORDER if m in metrics.get("distilled", {})]
    names += [m for m in metrics.get("distilled", {}) if m not in names]
    rows = "\n".join(
        f"| {metric} | " + " | ".join(_value(metrics[role].get(metric, "—")) for role in ("teacher", "baseline", "distilled")) + " |"
        for metric in names
    )
    hyperparameters = "\n".join(f"| `{k}` | `{json.dumps(v)}` |" for k, v in config["hyperparameters"].items())
    overrides = " ".join(f"--set {k}={v}" for k, v in config["hyperparameters"].items())
    budget = " ".join(
        f"--{flag} {run[key]}" for flag, key in (("steps", "steps"), ("sft-steps", "sft_steps")) if run.get(key) is not None
    )
    paper_lines = "\n".join(f"- {paper}" for paper in papers) or "- (see the kdatlas entry)"
    data = config.get("data", {}).get("id") or config.get("evaluation", {}).get("description", "")
    return f"""---
library_name: transformers
tags:
- knowledge-distillation
- kdatlas
- {method_id}
---

# {name}: distilled student

A student distilled with the kdatlas recipe `{method_id}`.

- **Teacher:** `{config.get("teacher", {}).get("id", "?")}`
- **Student (initialisation):** `{config.get("student", {}).get("id", "?")}`, {config.get("student", {}).get("parameters", "?")} parameters
- **Data:** {data}
- **Budget:** {run.get("steps")} steps (seed {run.get("seed")}), batch {run.get("batch_size")}, peak learning rate {run.get("learning_rate")}

## Hyper-parameters

| name | value |
|---|---|
{hyperparameters}

## Held-out results

| metric | teacher | baseline student | distilled student |
|---|---:|---:|---:|
{rows}

The baseline is the same student with the same initialisation and budget, trained without the
method. One run, one seed: differences of a few items are within its noise.

## Papers

{paper_lines}

## Reproduce

```bash
kdatlas run {method_id} --seed {run.get("seed")} {budget} {overrides}
```

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")
tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")
```
"""


def save_student(out: Path, result: Any) -> Path | None:
    """Save the distilled student, its tokenizer and its model card into ``out/student``."""
    if result.student is None:
        return None
    folder = out / "student"
    result.student.save_pretrained(folder)  # safetensors
    if result.tokenizer is not None:
        result.tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(model_card(result), encoding="utf-8")
    return folder
