"""The embedded encoder teachers of the BERT-era methods: a masked LM and a sequence classifier.

BERT-era distillation has two teachers: the pre-trained encoder (DistilBERT distils its masked-LM
outputs; TinyBERT's general distillation and MiniLM learn from it) and the same encoder after
task fine-tuning (Patient KD, TinyBERT's task distillation, every logits method on a task). The
embedded pair is made the same way, at toy scale: a 4-layer, 128-wide BERT
(`reference_impls.core.models.build_encoder_config`) is pre-trained with BERT's masked-LM loss on
the string suite's classification texts, then fine-tuned to classify them (which operation
turned the input into the output: `reference_impls.tasks.strings.classification_view`).

Both are entries of the one teacher cache (`reference_impls.teachers.embedded.load_or_build`):
shipped with the package when the recipe is the default, else trained on first use (about two
minutes on 2 CPU cores) and cached. The classifier's key includes the masked LM's, so a changed
pre-training recipe retrains both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertForMaskedLM,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from reference_impls.core.cache import cache_root
from reference_impls.core.encoders import LabelCrossEntropy, MaskedLM, text_batches
from reference_impls.core.models import build_encoder_config
from reference_impls.core.tokenizer import build_encoder_tokenizer
from reference_impls.core.training import train_student
from reference_impls.tasks.strings import SUITE_VERSION, TASK_NAMES, classification_view, make_split
from reference_impls.teachers.embedded import entry_key, load_or_build

ENCODER_MESSAGE = "Training the embedded encoder teacher (first use, cached afterwards)…"


@dataclass(frozen=True)
class EncoderTeacherRecipe:
    """How the encoder teachers are trained (part of their cache keys)."""

    mlm_steps: int = 1200
    task_steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    train_size: int = 20000
    seed: int = 0


# A few steps only: for tests of the mechanics, not of teacher quality.
QUICK_ENCODER_RECIPE = EncoderTeacherRecipe(mlm_steps=3, task_steps=3, batch_size=8, train_size=64)


def _train_texts(recipe: EncoderTeacherRecipe) -> tuple[list[str], list[int]]:
    pairs = classification_view(make_split("train", recipe.train_size, seed=recipe.seed))
    return [text for text, _ in pairs], [label for _, label in pairs]


def encoder_keys(recipe: EncoderTeacherRecipe) -> dict[str, str]:
    """``{"mlm": key, "classifier": key}``: the cache keys of the two teachers of ``recipe``."""
    tokenizer = build_encoder_tokenizer()
    texts, labels = _train_texts(EncoderTeacherRecipe(train_size=64, seed=recipe.seed))
    identity = {
        "sample": list(zip(texts, labels, strict=True)),  # catches generator edits without a version bump
        "config": build_encoder_config(tokenizer, num_labels=len(TASK_NAMES), teacher=True).to_dict(),
        "vocab": sorted(tokenizer.get_vocab().items()),
        "recipe": asdict(recipe),
    }
    key = entry_key(SUITE_VERSION, identity)
    return {"mlm": f"encoder-mlm-{key}", "classifier": f"encoder-classifier-{key}"}


def encoder_dirs(recipe: EncoderTeacherRecipe = EncoderTeacherRecipe()) -> dict[str, Path]:
    return {name: cache_root() / "teachers" / key for name, key in encoder_keys(recipe).items()}


def accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, int]]
) -> float:
    """Share of ``(text, label)`` pairs the classifier labels right (greedy, batched)."""
    return float(
        sum(
            p == label
            for p, (_, label) in zip(predict(model, tokenizer, [t for t, _ in pairs]), pairs, strict=True)
        )
    ) / len(pairs)


@torch.no_grad()
def predict(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 128
) -> list[int]:
    """The classifier's most likely label per text."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    predictions: list[int] = []
    for batch in text_batches(tokenizer, texts, batch_size=batch_size, shuffle=False):
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        predictions += logits.argmax(-1).tolist()
    model.train(was_training)
    return predictions


def _build_mlm(
    recipe: EncoderTeacherRecipe, device: str, progress: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    tokenizer = build_encoder_tokenizer()
    config = build_encoder_config(tokenizer, num_labels=len(TASK_NAMES), teacher=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = BertForMaskedLM(config).to(device)
        texts, _ = _train_texts(recipe)
        batches = text_batches(tokenizer, texts, batch_size=recipe.batch_size, seed=recipe.seed)
        curve = train_student(model, batches, MaskedLM(tokenizer), recipe.mlm_steps, None,
                              learning_rate=recipe.learning_rate, progress=progress,
                              description=f"{ENCODER_MESSAGE} masked LM")  # fmt: skip
    return model, tokenizer, {"recipe": asdict(recipe), "final_mlm_loss": curve[-1] if curve else None}


def _build_classifier(
    recipe: EncoderTeacherRecipe, mlm: PreTrainedModel, device: str, progress: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    tokenizer = build_encoder_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = BertForSequenceClassification(mlm.config).to(device)
        missing, _ = model.load_state_dict(mlm.state_dict(), strict=False)  # the encoder; new pooler and head
        assert all(k.startswith(("bert.pooler", "classifier")) for k in missing), missing
        texts, labels = _train_texts(recipe)
        batches = text_batches(tokenizer, texts, labels, batch_size=recipe.batch_size, seed=recipe.seed)
        train_student(model, batches, LabelCrossEntropy(), recipe.task_steps, None,
                      learning_rate=recipe.learning_rate, progress=progress,
                      description=f"{ENCODER_MESSAGE} classifier")  # fmt: skip
    card = {
        "recipe": asdict(recipe),
        "test_accuracy": accuracy(
            model, tokenizer, classification_view(make_split("test", 420, seed=recipe.seed))
        ),
        "ood_accuracy": accuracy(
            model, tokenizer, classification_view(make_split("ood", 420, seed=recipe.seed))
        ),
    }
    return model, tokenizer, card


def build_encoder_teacher(
    kind: str, recipe: EncoderTeacherRecipe, device: str, progress: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Train one encoder teacher in memory, ``kind`` ``"mlm"`` or ``"classifier"`` (which trains
    its masked LM first): for ``kdatlas teachers build``."""
    mlm = _build_mlm(recipe, device, progress)
    return mlm if kind == "mlm" else _build_classifier(recipe, mlm[0], device, progress)


@torch.no_grad()
def probe_outputs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[Any]:
    """What two builds of an encoder teacher are compared on: the predicted label of each text (a
    classifier), or the most likely token at every position (a masked LM)."""
    if model.config.architectures and "ForSequenceClassification" in model.config.architectures[0]:
        return predict(model, tokenizer, texts)
    device = next(model.parameters()).device
    outputs: list[Any] = []
    for batch in text_batches(tokenizer, texts, batch_size=128, shuffle=False):
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        outputs += [
            row[: int(n)].tolist()
            for row, n in zip(logits.argmax(-1), batch["attention_mask"].sum(-1), strict=True)
        ]
    return outputs


def probe_texts() -> list[str]:
    return [text for text, _ in classification_view(make_split("test", 210))]


def load_or_train_encoder_teachers(
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    recipe: EncoderTeacherRecipe = EncoderTeacherRecipe(),
) -> tuple[PreTrainedModel, PreTrainedModel, PreTrainedTokenizerBase]:
    """``(masked LM, classifier, tokenizer)``, both in eval mode on ``device``: shipped, else
    cached, else trained (the classifier from the masked LM) and cached."""
    dirs = encoder_dirs(recipe)
    mlm, tokenizer = load_or_build(
        dirs["mlm"], device, lambda: _build_mlm(recipe, str(device), progress), AutoModelForMaskedLM
    )
    classifier, _ = load_or_build(
        dirs["classifier"],
        device,
        lambda: _build_classifier(recipe, mlm, str(device), progress),
        AutoModelForSequenceClassification,
    )
    return mlm, classifier, tokenizer
