"""What a scored model's metrics should hold."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def expected_names(metrics: dict[str, Any], names: Iterable[str]) -> set[str]:
    """``names``, less the attack success rate when the model answered nothing correctly (there
    is nothing to attack, so no rate is reported; tiny test budgets often get there)."""
    names = set(names)
    if metrics.get("exact_match") == 0:
        names.discard("attack_success_rate")
    return names
