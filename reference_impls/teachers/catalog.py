"""The embedded teachers as a catalog: which are shipped, and rebuilding them from their recipes.

``kdatlas teachers list`` and ``kdatlas teachers build`` are this module. A rebuild trains the
teacher from its recipe (as a first use on a machine without the shipped weights would) and
compares it with the shipped one: whether the weights are identical, how far apart they are, the
card metrics of both, and how often their greedy answers agree on held-out prompts. Training is
deterministic for a seed and thread count on one machine, so a rebuild on another machine or
thread count usually differs a little — which is why the shipped weights, not the recipe, are
what every documented number was measured with. ``--ship`` replaces the shipped entry (for a
maintainer who changed a recipe; every results file must then be regenerated).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from reference_impls.core.generation import generate_responses
from reference_impls.tasks import instructions as instruction_suite
from reference_impls.tasks.strings import make_split
from reference_impls.teachers import embedded, encoder, instruct

Built = tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]


@dataclass(frozen=True)
class EmbeddedTeacher:
    """One embedded teacher of the default recipe.

    Attributes:
        name: ``strings`` (the white-box methods' teacher) or ``instructions`` (black-box).
        summary: What it is for.
        cache_dir: Where the default recipe's entry is cached; its name is the entry key.
        build: ``(device, progress) -> (model, tokenizer, card)``: train from the recipe.
        probe_prompts: Held-out prompts (texts, for an encoder) on which a rebuilt and the
            shipped teacher are compared.
        auto_class: The transformers auto class that loads the entry.
        probe: ``(model, tokenizer, prompts) -> outputs`` compared between the two: greedy
            answers for a decoder, predicted labels or tokens for an encoder.
    """

    name: str
    summary: str
    cache_dir: Callable[[], Path]
    build: Callable[[str, bool], Built]
    probe_prompts: Callable[[], list[str]]
    auto_class: type = AutoModelForCausalLM
    probe: Callable[[PreTrainedModel, PreTrainedTokenizerBase, list[str]], list[Any]] = generate_responses

    @property
    def key(self) -> str:
        return self.cache_dir().name


TEACHERS = {
    "strings": EmbeddedTeacher(
        "strings",
        "the white-box methods' teacher, string suite",
        embedded.teacher_dir,
        lambda device, progress: embedded.build_teacher(embedded.TeacherRecipe(), device, progress),
        lambda: [e.prompt for e in make_split("test", 210)],
    ),
    "instructions": EmbeddedTeacher(
        "instructions",
        "the black-box pipelines' teacher, instruction suite",
        instruct.instruct_teacher_dir,
        lambda device, progress: instruct.build_instruct_teacher(instruct.InstructTeacherRecipe(), device, progress),
        lambda: [e.prompt for e in instruction_suite.make_instructions("test", 200)],
    ),
    **{
        f"encoder-{kind}": EmbeddedTeacher(
            f"encoder-{kind}",
            summary,
            lambda kind=kind: encoder.encoder_dirs()[kind],
            lambda device, progress, kind=kind: encoder.build_encoder_teacher(
                kind, encoder.EncoderTeacherRecipe(), device, progress
            ),
            encoder.probe_texts,
            auto_class,
            encoder.probe_outputs,
        )
        for kind, summary, auto_class in (
            ("mlm", "the encoder methods' pre-trained teacher (masked LM), classification suite", AutoModelForMaskedLM),
            ("classifier", "the encoder methods' fine-tuned teacher, classification suite", AutoModelForSequenceClassification),
        )
    },
}


def read_card(entry: Path) -> dict[str, Any] | None:
    """An entry's card, or ``None`` when the entry is missing or incomplete."""
    path = entry / "teacher_card.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def status(teacher: EmbeddedTeacher, root: Path = embedded.SHIPPED_ROOT) -> dict[str, Any]:
    """The teacher's key, whether it is shipped and cached, and its card."""
    shipped = root / teacher.key
    card = read_card(shipped) or read_card(teacher.cache_dir())
    return {
        "name": teacher.name,
        "key": teacher.key,
        "shipped": embedded.is_complete(shipped),
        "cached": embedded.is_complete(teacher.cache_dir()),
        "card": card,
    }


def stale_entries(root: Path = embedded.SHIPPED_ROOT) -> list[Path]:
    """Shipped folders that no current recipe produces (a recipe changed without re-shipping)."""
    current = {teacher.key for teacher in TEACHERS.values()}
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in current) if root.is_dir() else []


def compare(
    rebuilt: Built,
    shipped_dir: Path,
    prompts: list[str],
    device: str = "cpu",
    *,
    auto_class: type = AutoModelForCausalLM,
    probe: Callable[[PreTrainedModel, PreTrainedTokenizerBase, list[str]], list[Any]] = generate_responses,
) -> dict[str, Any]:
    """How a rebuilt teacher compares with the shipped entry ``shipped_dir``."""
    model, tokenizer, card = rebuilt
    shipped_card = read_card(shipped_dir)
    if shipped_card is None:
        return {"shipped": False, "rebuilt_card": card}
    shipped_model, _ = embedded.load_entry(shipped_dir, device, auto_class)
    shipped_weights = load_file(shipped_dir / "model.safetensors")
    rebuilt_weights = {k: v.detach().cpu() for k, v in model.state_dict().items() if k in shipped_weights}
    largest = max(float((rebuilt_weights[k] - shipped_weights[k]).abs().max()) for k in rebuilt_weights)
    ours = probe(model.eval(), tokenizer, prompts)
    theirs = probe(shipped_model, tokenizer, prompts)
    return {
        "shipped": True,
        "identical_weights": largest == 0.0,
        "max_abs_weight_difference": largest,
        "greedy_agreement": sum(a == b for a, b in zip(ours, theirs, strict=True)) / max(len(prompts), 1),
        "probe_prompts": len(prompts),
        "rebuilt_card": card,
        "shipped_card": {k: v for k, v in shipped_card.items() if k not in ("recipe",)},
    }


def ship(teacher: EmbeddedTeacher, rebuilt: Built, root: Path = embedded.SHIPPED_ROOT) -> Path:
    """Write ``rebuilt`` as the shipped entry of ``teacher`` and drop that teacher's stale entries."""
    model, tokenizer, card = rebuilt
    target = root / teacher.key
    for entry in stale_entries(root):
        if (read_card(entry) or {}).get("teacher") == teacher.name:
            shutil.rmtree(entry)
    shutil.rmtree(target, ignore_errors=True)
    embedded.save_entry(target, model, tokenizer, {"key": teacher.key, "teacher": teacher.name, **card})
    return target


def rebuild(
    teacher: EmbeddedTeacher, *, device: str = "cpu", progress: bool = True, root: Path = embedded.SHIPPED_ROOT
) -> tuple[Built, dict[str, Any]]:
    """Train ``teacher`` from its recipe (in memory) and compare it with the shipped entry."""
    with torch.random.fork_rng(devices=[]):
        rebuilt = teacher.build(device, progress)
    prompts = teacher.probe_prompts()
    return rebuilt, compare(rebuilt, root / teacher.key, prompts, device, auto_class=teacher.auto_class, probe=teacher.probe)


def ship_cached(teacher: EmbeddedTeacher, root: Path = embedded.SHIPPED_ROOT) -> Path:
    """Ship the teacher already in the user's cache (built by a run) without retraining it."""
    entry = teacher.cache_dir()
    card = read_card(entry)
    if card is None:
        raise ValueError(f"no cached '{teacher.name}' teacher at {entry}: run `kdatlas teachers build {teacher.name}`")
    model, tokenizer = embedded.load_entry(entry, "cpu", teacher.auto_class)
    card = {k: v for k, v in card.items() if k not in ("weights_sha256", "built_with", "key")}
    return ship(teacher, (model, tokenizer, card), root)
