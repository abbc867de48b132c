"""Shared test settings."""

from __future__ import annotations

from typing import Any

import pytest

# A run small enough for mechanics tests: a few steps, a few examples, no progress bars.
TINY_RUN: dict[str, Any] = {
    "steps": 2,
    "sft_steps": 2,
    "eval_size": 14,
    "train_size": 32,
    "batch_size": 8,
    "max_new_tokens": 8,
    "progress": False,
}


@pytest.fixture
def tiny_run() -> dict[str, Any]:
    """Keyword arguments of `RunConfig` for a run that takes about a second."""
    return dict(TINY_RUN)
