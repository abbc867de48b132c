"""The embedded teacher: shipped with the package, else trained on first use and cached.

The project ships the teachers its own recipes train (`reference_impls/teachers/shipped/`, package
data: safetensors weights, tokenizer and card, in a folder named by the recipe's key), so a first
run on a fresh machine trains no teacher and every machine uses the same weights — training is
deterministic for a seed and a thread count, but not across machines and thread counts, and a
teacher rebuilt elsewhere scores differently. A recipe without a shipped entry (a test's few-step
recipe, an edited default) is trained on first use and cached. `reference_impls.teachers.catalog`
rebuilds the shipped ones (``kdatlas teachers build``) and compares.

The cache key combines the suite version with a hash of everything that determines the weights
(model config, tokenizer vocabulary, training recipe), so changing any of them trains a new
teacher instead of silently reusing a stale one. Writes are atomic: the teacher is saved into a
temporary sibling directory that is renamed into place only when complete, so an interrupted
run never leaves a half-written cache entry behind.

The recipe is sized for the 2-minute budget on 2 CPU cores; `benchmarks/run_times.py` measures
the build time and the teacher card (`teacher_card.json` in the cache entry) records its
held-out exact match. The teacher is good but not perfect: addition and the multi-answer vowel
task are near-solved, counting and reversal are its weak tasks, and OOD lengths mostly fail.
Training is deterministic for a given seed *and thread count*: float reductions differ across
thread counts, so weights trained with 1 and 2 threads differ slightly.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.cache import cache_root
from reference_impls.core.generation import generate_responses
from reference_impls.core.metrics import exact_match
from reference_impls.core.models import build_decoder, build_teacher_config
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.core.training import cross_entropy_objective, make_dataloader, train_student
from reference_impls.tasks.strings import SUITE_VERSION, TASK_NAMES, make_split

TEACHER_MESSAGE = "Training the embedded teacher (first use, cached afterwards)…"
SHIPPED_ROOT = Path(__file__).parent / "shipped"
"""Package data: the teachers of the default recipes, one folder per entry key."""


@dataclass(frozen=True)
class TeacherRecipe:
    """How the embedded teacher is trained (part of its cache key)."""

    steps: int = 1600
    batch_size: int = 64
    learning_rate: float = 3e-3
    train_size: int = 50000
    seed: int = 0
    # The arithmetic and counting tasks need many more updates than the string copies, so the
    # teacher sees them three times as often (the order of the cycle over tasks).
    task_mix: tuple[str, ...] = tuple(
        ["copy", "add", "rev", "count", "sort", "add", "up", "count", "vowel", "add", "sort", "count"]
    )


# A few steps only: for tests of the caching mechanics, not of teacher quality.
QUICK_RECIPE = TeacherRecipe(steps=3, batch_size=8, train_size=64, task_mix=TASK_NAMES)


def entry_key(suite_version: str, identity: dict[str, Any]) -> str:
    """``<suite version>-<hash>`` of what determines an embedded teacher's weights (its config,
    vocabulary, recipe and a sample of its training data). Both embedded teachers are keyed so."""
    identity = {**identity, "suite": suite_version}
    if isinstance(identity.get("config"), dict):
        # transformers_version changes with the library but not the weights: keep it out of the key.
        identity["config"] = {k: v for k, v in identity["config"].items() if k != "transformers_version"}
    return f"{suite_version}-{hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]}"


def teacher_key(recipe: TeacherRecipe) -> str:
    """The cache key of the string-suite teacher trained with ``recipe``."""
    tokenizer = build_tokenizer()
    identity = {
        # A sample of the training data: catches generator edits that forgot to bump the version.
        "sample": [
            (e.prompt, e.response) for e in make_split("train", 64, seed=recipe.seed, tasks=recipe.task_mix)
        ],
        "config": build_teacher_config(tokenizer).to_dict(),
        "vocab": sorted(tokenizer.get_vocab().items()),
        "recipe": asdict(recipe),
    }
    return entry_key(SUITE_VERSION, identity)


def teacher_dir(recipe: TeacherRecipe = TeacherRecipe()) -> Path:
    """Where the teacher trained with ``recipe`` is (or will be) cached."""
    return cache_root() / "teachers" / teacher_key(recipe)


def train_teacher(
    recipe: TeacherRecipe, device: str, progress: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Train the embedded teacher from scratch with next-token cross-entropy on the train split."""
    tokenizer = build_tokenizer()
    model = build_decoder(build_teacher_config(tokenizer), recipe.seed).to(device)
    examples = make_split("train", recipe.train_size, seed=recipe.seed, tasks=recipe.task_mix)
    batches = make_dataloader(
        tokenizer,
        [e.prompt for e in examples],
        [e.response for e in examples],
        batch_size=recipe.batch_size,
        seed=recipe.seed,
    )
    train_student(
        model,
        batches,
        cross_entropy_objective,
        recipe.steps,
        accelerator=None,  # the main process trains the teacher alone, even under accelerate launch
        learning_rate=recipe.learning_rate,
        progress=progress,
        description=TEACHER_MESSAGE,
    )
    return model, tokenizer


def build_teacher(
    recipe: TeacherRecipe, device: str | torch.device = "cpu", progress: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Train the teacher and score it: ``(model, tokenizer, card)``, the card holding the recipe and
    the held-out exact match."""
    model, tokenizer = train_teacher(recipe, str(device), progress)
    test = make_split("test", 210, seed=recipe.seed)
    predictions = generate_responses(model, tokenizer, [e.prompt for e in test])
    return model, tokenizer, {"recipe": asdict(recipe), "test_exact_match": exact_match(predictions, test)}


def load_or_train_teacher(
    device: str | torch.device = "cpu", progress: bool = True, *, recipe: TeacherRecipe = TeacherRecipe()
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The embedded teacher and its tokenizer: shipped, else cached, else trained and cached.

    Args:
        device: Where to place the model.
        progress: Show a progress bar while training.
        recipe: Training recipe (tests use ``QUICK_RECIPE``).

    Returns:
        ``(model, tokenizer)``, the model in eval mode on ``device``.
    """
    return load_or_build(teacher_dir(recipe), device, lambda: build_teacher(recipe, device, progress))


def load_or_build(
    target: Path,
    device: str | torch.device,
    build: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]],
    auto_class: type = AutoModelForCausalLM,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The one builder of every embedded teacher: the shipped entry of ``target``'s key if the
    package has one, else the cache entry ``target`` if it is complete, else ``build()`` (train;
    return model, tokenizer and its card), saved atomically, then loaded.

    Loading what was saved (rather than returning the trained model) makes a first run and every
    later run use exactly the same weights.

    Raises:
        ValueError: A shipped entry whose weights do not match its card (damaged or a Git LFS
            pointer): reinstall, or rebuild it with ``kdatlas teachers build --ship``.
    """
    shipped = SHIPPED_ROOT / target.name
    if is_complete(shipped):
        check_weights(shipped)
        return load_entry(shipped, device, auto_class)
    if not is_complete(target):
        model, tokenizer, card = build()
        save_entry(target, model, tokenizer, {"key": target.name, **card})
    return load_entry(target, device, auto_class)


def is_complete(target: Path) -> bool:
    """Whether the cache entry ``target`` is complete (its card, written last, exists)."""
    return (target / "teacher_card.json").exists()


def weights_digest(target: Path) -> str:
    """SHA-256 of an entry's ``model.safetensors``."""
    return hashlib.sha256((target / "model.safetensors").read_bytes()).hexdigest()


def check_weights(target: Path) -> None:
    """Raise unless the entry's weights are the ones its card names (``weights_sha256``)."""
    card = json.loads((target / "teacher_card.json").read_text(encoding="utf-8"))
    expected = card.get("weights_sha256")
    if expected is None or not (target / "model.safetensors").is_file() or weights_digest(target) != expected:
        raise ValueError(
            f"the teacher weights in {target} do not match their card (damaged, or a Git LFS pointer): "
            "reinstall kdatlas, or rebuild them with `kdatlas teachers build --ship`"
        )


def save_entry(
    target: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, card: dict[str, object]
) -> None:
    """Save a trained model as the cache entry ``target``, atomically (staged, then renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp creates it private; the cache entry is an ordinary folder
    try:
        model.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        card = {
            **card,
            "weights_sha256": weights_digest(staging),
            "built_with": {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
            },
        }
        # The card is written last: its presence marks a complete entry.
        (staging / "teacher_card.json").write_text(json.dumps(card, indent=2) + "\n")
        for path in staging.iterdir():
            path.chmod(0o644)  # some writers create private files; an entry is ordinary package data
        if is_complete(target):  # another process finished first
            shutil.rmtree(staging)
        else:
            shutil.rmtree(target, ignore_errors=True)  # an incomplete entry not written by us
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_entry(
    target: Path, device: str | torch.device, auto_class: type = AutoModelForCausalLM
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (eval mode, on ``device``) and tokenizer of a complete cache entry; ``auto_class``
    for the encoder teachers (masked LM, sequence classifier)."""
    tokenizer = AutoTokenizer.from_pretrained(target)
    # The attention implementation is not saved with the config; eager is faster at this size.
    model = auto_class.from_pretrained(target, attn_implementation="eager").to(device).eval()
    return model, tokenizer
