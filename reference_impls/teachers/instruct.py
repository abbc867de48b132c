"""The embedded *instruction* teacher: the tiny model black-box pipelines talk to.

It is trained on the instruction suite's meta-tasks (`meta_tasks.teacher_training_pairs`:
follow instructions, conversations, system prompts, write new instructions, judge, rewrite,
evolve, annotate), and shipped and cached like the white-box teacher (key = suite version + hash
of config, vocabulary and recipe; atomic writes; trained on first use only for a recipe the
package does not ship). It is a separate model from the white-box teacher, so
the white-box methods' numbers do not move when this suite grows.

Its card (``teacher_card.json``) records the exact accuracy of each meta-task on held-out
prompts (`meta_task_accuracy`): the teacher is a real model and is wrong some of the time, which
is what the pipelines' filters are for.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.cache import cache_root
from reference_impls.core.generation import generate_responses
from reference_impls.core.models import _decoder_config, build_decoder
from reference_impls.core.sft import TrainingExample, bucketed_loader
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.core.training import cross_entropy_objective, train_student
from reference_impls.tasks import instructions as suite
from reference_impls.tasks import meta_tasks
from reference_impls.teachers.embedded import entry_key, load_or_build

TEACHER_MESSAGE = (
    "Training the embedded instruction teacher (first use only, about 10 minutes on 2 CPU cores; "
    "cached afterwards)…"
)


@dataclass(frozen=True)
class InstructTeacherRecipe:
    """How the instruction teacher is built and trained (all of it is part of its cache key)."""

    # 6000 steps (about 10 minutes once on 2 cores): at 3000 the teacher followed only 55% of the
    # held-out instructions and fixed 23% of wrong answers, so every pipeline distilled mostly
    # wrong data; at 6000 it follows 90% and fixes 76% (its card; judging stays at chance).
    steps: int = 6000
    batch_size: int = 64
    learning_rate: float = 3e-3
    train_size: int = 120000
    seed: int = 0
    layers: int = 3
    width: int = 128
    ffn: int = 256


def _config(recipe: InstructTeacherRecipe, tokenizer: PreTrainedTokenizerBase):
    heads = max(1, recipe.width // 32)
    return _decoder_config(tokenizer, layers=recipe.layers, width=recipe.width, heads=heads, ffn=recipe.ffn)


def instruct_teacher_dir(recipe: InstructTeacherRecipe = InstructTeacherRecipe()) -> Path:
    """Where the teacher trained with ``recipe`` is (or will be) cached."""
    tokenizer = build_tokenizer()
    identity = {
        "sample": meta_tasks.teacher_training_pairs(64, seed=recipe.seed),
        "config": _config(recipe, tokenizer).to_dict(),
        "vocab": sorted(tokenizer.get_vocab().items()),
        "recipe": asdict(recipe),
    }
    return cache_root() / "teachers" / entry_key(suite.SUITE_VERSION, identity)


def meta_task_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n: int = 100, seed: int = 1
) -> dict[str, float]:
    """Greedy exact accuracy per meta-task on ``n`` prompts each, drawn from test instructions.

    For ``new``, ``deepen`` and ``widen`` (many valid outputs) a response counts as correct when
    it is a well-formed instruction that satisfies the request (see `check_meta`).
    """
    rng = random.Random(f"meta-eval-{seed}")
    results: dict[str, float] = {}
    for meta in meta_tasks.TEACHER_MIX:
        pairs = []
        while len(pairs) < n:
            prompt, response = meta_tasks.teacher_example(rng, meta)
            if all(suite.in_test_bucket(p) for p in meta_tasks.instructions_in(prompt)):
                pairs.append((prompt, response))
        outputs = generate_responses(model, tokenizer, [p for p, _ in pairs], max_new_tokens=40)
        results[meta] = sum(check_meta(meta, p, r, o) for (p, r), o in zip(pairs, outputs, strict=True)) / n
    return results


def check_meta(meta: str, prompt: str, reference: str, output: str) -> bool:
    """Whether ``output`` does what meta-task ``meta`` asked in ``prompt`` (``reference``: the
    suite's own response)."""
    output = output.strip()
    if meta in ("new", "widen"):
        parsed = suite.parse_instruction(output)
        if parsed is None:
            return False
        if meta == "widen":
            original = suite.parse_instruction(prompt[len("widen: ") :])
            return original is not None and parsed.task != original.task
        return True
    if meta == "deepen":
        original = suite.parse_instruction(prompt[len("deepen: ") :])
        parsed = suite.parse_instruction(output)
        if original is None or parsed is None:
            return False
        if original.task.split(" ")[0] in suite.ATOMIC or suite.depth_of(original) == suite.MAX_DEPTH:
            return parsed.prompt == original.prompt
        return parsed.input == original.input and suite.depth_of(parsed) == suite.depth_of(original) + 1
    if meta == "system" and prompt.startswith(suite.EXPLAIN):
        return output == reference
    if meta in ("follow", "conversation", "system"):
        instruction = prompt.split(suite.TURN_SEPARATOR)[-1]
        parsed = suite.parse_instruction(instruction)
        return parsed is not None and output in parsed.answers
    return output == reference


def train_instruct_teacher(
    recipe: InstructTeacherRecipe, device: str, progress: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Train the instruction teacher from scratch with next-token cross-entropy on the meta-tasks."""
    tokenizer = build_tokenizer()
    model = build_decoder(_config(recipe, tokenizer), recipe.seed).to(device)
    pairs = meta_tasks.teacher_training_pairs(recipe.train_size, seed=recipe.seed)
    examples = [TrainingExample.single(prompt, response) for prompt, response in pairs]
    batches = bucketed_loader(tokenizer, examples, batch_size=recipe.batch_size, seed=recipe.seed)
    train_student(
        model,
        batches,
        cross_entropy_objective,
        recipe.steps,
        accelerator=None,
        learning_rate=recipe.learning_rate,
        progress=progress,
        description=TEACHER_MESSAGE,
    )
    return model, tokenizer


def build_instruct_teacher(
    recipe: InstructTeacherRecipe, device: str | torch.device = "cpu", progress: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Train the instruction teacher and score it: ``(model, tokenizer, card)``, the card holding
    the recipe and the accuracy of each meta-task."""
    model, tokenizer = train_instruct_teacher(recipe, str(device), progress)
    card = {"recipe": asdict(recipe), "meta_task_accuracy": meta_task_accuracy(model.eval(), tokenizer)}
    return model, tokenizer, card


def load_or_train_instruct_teacher(
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    recipe: InstructTeacherRecipe = InstructTeacherRecipe(),
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The instruction teacher and its tokenizer: shipped, else cached, else trained and cached."""
    target = instruct_teacher_dir(recipe)
    return load_or_build(target, device, lambda: build_instruct_teacher(recipe, device, progress))
