"""Shared plumbing of the hint/feature methods: which layers to match, how to read them, how to
bridge widths. The math of each method stays in its module; this is what they all need.

Features are read without editing the model: hidden states and attention maps through
``output_hidden_states`` / ``output_attentions``, anything else (queries, keys, values) through
forward hooks (`capture_outputs`). Indices follow ``output_hidden_states``: 0 is the embedding
output, ``i`` the output of layer ``i`` (1-based), so a map ``{student index: teacher index}``
reads both tuples directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from transformers import PreTrainedModel

LAYER_MAPS = ("uniform", "skip", "last")


def layer_map(teacher_layers: int, student_layers: int, strategy: str = "uniform") -> dict[int, int]:
    """Which teacher hidden state each student hidden state learns from.

    * ``uniform`` (TinyBERT, §3.1 "mapping function" ``g(m) = m·N/M``): every student index
      ``0..M`` including the embeddings, to ``round(m·N/M)``.
    * ``skip`` (PKD-Skip): student layers ``1..M-1`` to every ``N/M``-th teacher layer; the last
      layer is left to the output loss, as in Patient KD (6 of 12: teacher layers 2, 4, 6, 8, 10).
    * ``last`` (PKD-Last): student layers ``1..M-1`` to the teacher's last ``M-1`` layers below its
      top (6 of 12: teacher layers 7, 8, 9, 10, 11).
    """
    if strategy not in LAYER_MAPS:
        raise ValueError(f"layer map must be one of {', '.join(LAYER_MAPS)}; got {strategy!r}")
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(
            f"a student of {student_layers} layers cannot be mapped onto a teacher of {teacher_layers}: "
            "the student needs at least 1 layer and at most as many as the teacher"
        )
    if strategy == "uniform":
        return {m: round(m * teacher_layers / student_layers) for m in range(student_layers + 1)}
    if strategy == "skip":
        return {m: round(m * teacher_layers / student_layers) for m in range(1, student_layers)}
    return {m: teacher_layers - student_layers + m for m in range(1, student_layers)}


def projector(student_width: int, teacher_width: int) -> nn.Module:
    """A learned linear map from the student's width to the teacher's (TinyBERT's ``fit_dense``,
    PKD and DistillKit's projections); the identity when the widths already agree. Train it with
    the student: give its parameters to the student's optimiser."""
    return nn.Identity() if student_width == teacher_width else nn.Linear(student_width, teacher_width)


def uses_eager_attention(model: PreTrainedModel) -> bool:
    return getattr(model.config, "_attn_implementation", "eager") == "eager"


def forward_with_features(
    model: PreTrainedModel, batch: Mapping[str, Tensor], *, attentions: bool = False
) -> Any:
    """Run ``model`` on ``batch`` with every hidden state (and with ``attentions``, every attention
    map) in the output.

    Attention maps need eager attention: under SDPA or flash attention transformers computes no
    probabilities and returns none, so a method reading them would get an empty tuple. The model
    is switched to eager once, with a warning, rather than failing later or silently.
    """
    if attentions and not uses_eager_attention(model):
        warnings.warn(
            f"switching {type(model).__name__} to eager attention: "
            f"{model.config._attn_implementation!r} attention returns no attention maps",
            stacklevel=2,
        )
        model.set_attn_implementation("eager")
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in batch}
    return model(**inputs, output_hidden_states=True, output_attentions=attentions)


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks (``model.layers``, ``transformer.h``,
    ``encoder.layer``, …): the module list as long as ``config.num_hidden_layers``."""
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if not stacks:
        raise ValueError(
            f"found no list of {depth} transformer blocks in {type(model).__name__}; "
            "pass the modules to hook to capture_outputs yourself"
        )
    return stacks[0]


@contextmanager
def capture_outputs(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, Tensor]]:
    """Within the block, every forward of ``modules[name]`` stores its output under ``name``
    (the last call wins); the hooks are removed on exit, even after an error."""
    captured: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured[name] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in modules.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def matched_states(
    student_states: tuple[Tensor, ...], teacher_states: tuple[Tensor, ...], mapping: Mapping[int, int]
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(student index, student state, teacher state)`` for each pair of ``mapping``; checks that
    the tuples are as long as the mapping needs."""
    for student_index, teacher_index in mapping.items():
        if student_index >= len(student_states) or teacher_index >= len(teacher_states):
            raise ValueError(
                f"layer map pairs student state {student_index} with teacher state {teacher_index}, but the "
                f"outputs hold {len(student_states)} and {len(teacher_states)} states; build the map with "
                "layer_map(teacher.config.num_hidden_layers, student.config.num_hidden_layers)"
            )
        yield student_index, student_states[student_index], teacher_states[teacher_index].detach()


__all__ = [
    "LAYER_MAPS",
    "capture_outputs",
    "forward_with_features",
    "layer_map",
    "matched_states",
    "projector",
    "transformer_layers",
    "uses_eager_attention",
]
