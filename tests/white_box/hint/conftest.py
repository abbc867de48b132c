"""Tiny encoder teacher and student (random weights) and a batch of the classification suite."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from reference_impls.core.encoders import text_batches
from reference_impls.core.models import build_encoder_config
from reference_impls.core.tokenizer import build_encoder_tokenizer
from reference_impls.tasks.strings import TASK_NAMES, classification_view, make_split


@pytest.fixture(scope="module")
def tokenizer():
    return build_encoder_tokenizer()


def make_encoder(tokenizer, *, teacher: bool, seed: int = 0, **changes):
    config = build_encoder_config(tokenizer, num_labels=len(TASK_NAMES), teacher=teacher)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture()
def models(tokenizer):
    return make_encoder(tokenizer, teacher=False).train(), make_encoder(
        tokenizer, teacher=True, seed=1
    ).eval()


@pytest.fixture(scope="module")
def batch(tokenizer) -> dict[str, torch.Tensor]:
    pairs = classification_view(make_split("train", 16))
    return next(
        iter(
            text_batches(
                tokenizer, [t for t, _ in pairs], [y for _, y in pairs], batch_size=16, shuffle=False
            )
        )
    )
