r"""DSKD — dual-space knowledge distillation (Zhang et al., EMNLP 2024).

Logit KD compares two distributions produced by two different prediction heads. DSKD instead
projects each model's last hidden states into the *other* model's space and reads them out with
the other's (frozen) head, so both comparisons use one head: the projected teacher against the
student in the student's space, the projected student against the teacher in the teacher's
space. Trainable linear projectors carry the hidden states across widths. For different
vocabularies (the default here: the embedded student uses its own tokenizer), *cross-model
attention* (CMA) first aligns the two token sequences: queries from the student's token
embeddings, keys from the teacher's, and the attention moves teacher states to student positions.

The losses are in `reference_impls.white_box.logits._cross_tokenizer` (`dskd_loss`, `dskd_cma_loss`); this module
is the recipe. Defaults are the authors' scripts (``scripts/gpt2/dskd_gpt2_base.sh``,
``dskd_cma_gpt2_base.sh``: ``KD_RATE`` 0.5, ``KD_TEMP`` 2.0, ``KD_OBJ`` forward KL). The scripts
give the projectors their own learning rate (1e-3); here they train with the student's. Key:
``zhang2024dskd``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from reference_impls.core.data_sources import DatasetResponses
from reference_impls.core.recipe import Recipe, Students
from reference_impls.core.training import StepLoss, next_token_view
from reference_impls.registry import register
from reference_impls.white_box.logits._cross_tokenizer import (
    DSKDProjectors,
    ModelOutputs,
    dskd_cma_loss,
    dskd_loss,
)

PROJECTORS = "dskd_projectors"  # the submodule of the student that holds them (so they train with it)


def _outputs(net: torch.nn.Module, batch: dict[str, Tensor], prefix: str, cma: bool) -> ModelOutputs:
    """Logits, last hidden states, labels, head (and ids/embeddings for CMA), aligned once."""
    inputs = batch[f"{prefix}input_ids"]
    out = net(input_ids=inputs, attention_mask=batch[f"{prefix}attention_mask"], output_hidden_states=True)
    logits, labels = next_token_view(out.logits, batch[f"{prefix}labels"])
    core = getattr(net, "module", net)  # unwrap a distributed wrapper
    return ModelOutputs(
        logits=logits,
        hidden=out.hidden_states[-1][:, :-1],
        labels=labels,
        head=core.get_output_embeddings().weight,
        input_ids=inputs[:, :-1] if cma else None,
        embeddings=core.get_input_embeddings().weight if cma else None,
    )


@dataclass
class DSKDStep(StepLoss):
    """One DSKD step; `prepare` attaches the projectors to the student before training."""

    cross_model_attention: bool = True
    kd_rate: float = 0.5
    kd_temperature: float = 2.0
    projectors: DSKDProjectors | None = field(default=None, repr=False)

    def prepare(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        """Create the projectors for the two widths and register them on the student."""
        self.projectors = DSKDProjectors(
            student.config.hidden_size,
            teacher.config.hidden_size,
            cross_model_attention=self.cross_model_attention,
        ).to(next(student.parameters()).device)
        student.add_module(PROJECTORS, self.projectors)

    def __call__(
        self, model: torch.nn.Module, teacher: Any, batch: dict[str, Tensor], vocab_size: int | None
    ) -> Tensor:
        if teacher is None or self.projectors is None:
            raise ValueError("DSKD needs the teacher (white-box) and prepare() before training")
        prefix = "teacher_" if "teacher_input_ids" in batch else ""
        student = _outputs(model, batch, "", self.cross_model_attention)
        with torch.no_grad():
            teacher_out = _outputs(teacher, batch, prefix, self.cross_model_attention)
        loss = dskd_cma_loss if self.cross_model_attention else dskd_loss
        return loss(
            student, teacher_out, self.projectors, kd_temperature=self.kd_temperature, kd_rate=self.kd_rate
        ).total


@register("dskd")
def dskd_recipe(
    cross_model_attention: bool = True, kd_rate: float = 0.5, kd_temperature: float = 2.0
) -> Recipe:
    """DSKD on the dataset's responses; with CMA (default) the student has its own tokenizer.

    Args:
        cross_model_attention: Different vocabularies, aligned by cross-model attention (the
            embedded student then uses the ``"pair"`` tokenizer); ``False`` is DSKD for a shared
            vocabulary.
        kd_rate: w in (1 − w)·CE + w·KD (``KD_RATE`` 0.5).
        kd_temperature: Temperature of the divergence terms (``KD_TEMP`` 2.0).
    """
    return Recipe(
        method_id="dskd",
        data=DatasetResponses(),
        loss=DSKDStep(cross_model_attention, kd_rate, kd_temperature),
        # DSKD-CMA aligns two tokenizations; plain DSKD needs the teacher's vocabulary.
        students=Students(tokenizer="pair" if cross_model_attention else None),
    )
