"""Shared plumbing of the hint/feature methods: which layers to match, how to read them, how to
bridge widths. The math of each method stays in its module; this is what they all need.

Features are read without editing the model: hidden states and attention maps through
``output_hidden_states`` / ``output_attentions``, anything else (queries, keys, values) through
forward hooks (`capture_outputs`). Indices follow ``output_hidden_states``: 0 is the embedding
output, ``i`` the output of layer ``i`` (1-based), so a map ``{student index: teacher index}``
reads both tuples directly.
"""

from __future__ import annotations

import math
import warnings
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from transformers import PreTrainedModel

from reference_impls.core.encoders import LabelCrossEntropy
from reference_impls.core.training import StepLoss

LAYER_MAPS = ("uniform", "skip", "last")


def layer_map(teacher_layers: int, student_layers: int, strategy: str = "uniform") -> dict[int, int]:
    """Which teacher hidden state each student hidden state learns from.

    * ``uniform`` (TinyBERT, §3.1 "mapping function" ``g(m) = m·N/M``): every student index
      ``0..M`` including the embeddings, to ``round(m·N/M)``.
    * ``skip`` (PKD-Skip): student layers ``1..M-1`` to every ``N/M``-th teacher layer; the last
      layer is left to the output loss, as in Patient KD (6 of 12: teacher layers 2, 4, 6, 8, 10).
    * ``last`` (PKD-Last): student layers ``1..M-1`` to the teacher's last ``M-1`` layers below its
      top (6 of 12: teacher layers 7, 8, 9, 10, 11) — our reading of the paper's "last k layers";
      the authors' code we read sets only PKD-Skip's layers (``1,3,5,7,9``, 0-based).
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


def attention_projections(layer: nn.Module) -> dict[str, nn.Module]:
    """The query, key and value projections of one transformer block, for `capture_outputs`:
    BERT (``attention.self.query``), Llama and most decoders (``self_attn.q_proj``)."""
    for path, names in (
        ("attention.self", ("query", "key", "value")),
        ("self_attn", ("q_proj", "k_proj", "v_proj")),
    ):
        module = layer.get_submodule(path) if _has_submodule(layer, path) else None
        if module is not None and all(hasattr(module, name) for name in names):
            return {
                role: getattr(module, name)
                for role, name in zip(("query", "key", "value"), names, strict=True)
            }
    raise ValueError(
        f"{type(layer).__name__} has no separate query/key/value projections that kdatlas knows "
        "(GPT-2 fuses them in c_attn): pass the modules to hook to capture_outputs yourself"
    )


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def forward_with_projections(
    model: PreTrainedModel, batch: Mapping[str, Tensor], layers: list[int], *, attentions: bool = False
) -> tuple[Any, dict[int, dict[str, Tensor]]]:
    """`forward_with_features` plus the query, key and value projections (``[batch, seq, width]``)
    of the transformer blocks ``layers`` (0-based), read by hooks."""
    blocks = transformer_layers(model)
    hooked = {
        f"{i}.{role}": module for i in layers for role, module in attention_projections(blocks[i]).items()
    }
    with capture_outputs(hooked) as captured:
        outputs = forward_with_features(model, batch, attentions=attentions)
    return outputs, {i: {role: captured[f"{i}.{role}"] for role in ("query", "key", "value")} for i in layers}


def split_heads(states: Tensor, heads: int) -> Tensor:
    """``[batch, seq, heads × d]`` → ``[batch, heads, seq, d]``."""
    batch, seq, width = states.shape
    return states.reshape(batch, seq, heads, width // heads).transpose(1, 2)


def attention_scores(query: Tensor, key: Tensor, heads: int) -> Tensor:
    r"""The pre-softmax scores $QK^\top/\sqrt{d}$ per head, ``[batch, heads, seq, seq]``, from the
    projections (what TinyBERT's attention loss compares; padded keys are left to the loss's mask)."""
    q, k = split_heads(query, heads), split_heads(key, heads)
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


PROJECTORS = "hint_projectors"  # the student's submodule that holds a hint loss's projectors


class FeatureLoss(StepLoss):
    """Base of the hint losses that learn projectors: they train with the student (attached as
    its submodule ``hint_projectors``, so the optimiser and DDP see them) and are removed before
    the student is saved, so the checkpoint is the plain model."""

    projectors: nn.ModuleDict | None = None

    def attach(self, student: nn.Module, projectors: Mapping[str, nn.Module]) -> None:
        device = next(student.parameters()).device
        self.projectors = nn.ModuleDict(dict(projectors)).to(device)
        student.add_module(PROJECTORS, self.projectors)

    def release(self, student: nn.Module) -> None:
        student._modules.pop(PROJECTORS, None)


class DistilThenFineTune(FeatureLoss):
    """Task-agnostic feature distillation, then fine-tuning on the labels (MiniLM, MiniLMv2: the
    student learns the teacher's self-attention on the texts, then the task from the labels).

    The first ``distil_fraction`` of the steps run `distillation`; the rest plain cross-entropy
    on the labels (`reference_impls.core.encoders.LabelCrossEntropy`).
    """

    distil_fraction: float = 0.5
    distilling: bool = True

    def schedule(self, step: int, steps: int) -> None:
        self.distilling = step < round(self.distil_fraction * steps)

    @abstractmethod
    def distillation(self, student: nn.Module, teacher: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The method's distillation loss on one batch (the teacher given)."""

    def __call__(self, student: nn.Module, teacher: Any, batch: dict[str, Tensor], vocab_size: Any) -> Tensor:
        if not self.distilling:
            return LabelCrossEntropy()(student, None, batch, vocab_size)
        if teacher is None:
            raise ValueError(f"{type(self).__name__} needs the teacher model")
        return self.distillation(student, teacher, batch)


__all__ = [
    "LAYER_MAPS",
    "PROJECTORS",
    "DistilThenFineTune",
    "FeatureLoss",
    "attention_projections",
    "attention_scores",
    "capture_outputs",
    "forward_with_features",
    "forward_with_projections",
    "layer_map",
    "matched_states",
    "projector",
    "split_heads",
    "transformer_layers",
    "uses_eager_attention",
]
