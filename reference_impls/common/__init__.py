"""Shared plumbing for the method modules: toy tasks, tiny models, training, generation, metrics.

Read in this order: ``tasks`` (the synthetic suite) → ``tokenizer`` → ``models`` → ``training``
(batching and the loop) → ``generation`` → ``metrics`` → ``teacher`` (trained on first use,
cached) → ``data_sources`` (which sequences carry the loss) → ``harness`` (``run_recipe``: the
contract between a method module and the CLI).
"""

from .data_sources import DatasetResponses, DataSource, SourceContext, TeacherGenerated
from .harness import METRIC_NAMES, Recipe, RunConfig, RunResult, run_recipe

__all__ = [
    "METRIC_NAMES",
    "DataSource",
    "DatasetResponses",
    "Recipe",
    "RunConfig",
    "RunResult",
    "SourceContext",
    "TeacherGenerated",
    "run_recipe",
]
