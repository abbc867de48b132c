r"""TinyBERT (Jiao et al., Findings of EMNLP 2020): distil every layer — embeddings, hidden states,
attention — then the predictions.

With the uniform layer map ``g(m) = m·N/M`` (the paper's §3.1, Eq. 6; ``m = 0`` the embeddings),
the intermediate stage minimises

$$\mathcal{L}_{\text{layer}} = \sum_{m=0}^{M} \mathrm{MSE}\big(h_s^{m} W, h_t^{g(m)}\big)
 + \sum_{m=1}^{M} \frac1H \sum_{h=1}^{H} \mathrm{MSE}\big(A_s^{m,h}, A_t^{g(m),h}\big)$$

where $A$ are the *unnormalised* attention scores $QK^\top/\sqrt d$ (Eq. 7: "the (unnormalized)
attention matrix"; the authors' code returns them the same way), and the prediction stage the
soft cross-entropy $-\sum \sigma(z_t/t) \log \sigma(z_s/t)$ at $t = 1$ (Eq. 10; the code's
``--temperature`` default).

Algorithm (task-specific distillation, the README's two steps):

1. Freeze the fine-tuned teacher; attach a learned projection ``W`` (``fit_dense``) from the
   student's width to the teacher's.
2. Intermediate stage (the first 10/13 of the steps: the README's 10 epochs before 3 of
   predictions): hidden-state and embedding MSE through ``W`` plus the MSE of
   every head's scores, layer ``m`` of the student against layer ``g(m)`` of the teacher.
3. Prediction stage (the rest): the soft cross-entropy against the teacher's logits at ``t``.

Here: scores are computed from the query/key projections read by hooks, so no model is edited;
padded positions are left out (the code zeroes masked scores and averages over every entry, the
padded ones included). The code shares one ``fit_dense`` between embeddings and layers, the paper
writes ``W_e`` and ``W_h``: both are offered (``shared_projection``). Not done: general
distillation on a large corpus and the GloVe/BERT data augmentation (the paper's §3.3–4): this
is task distillation of a student trained from scratch. The prediction stage is written as
`reference_impls.losses.forward_kl`, the soft cross-entropy minus the teacher's entropy: the same
gradient. BibTeX: ``jiao2020tinybert``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reference_impls.core.encoders import LabelledTexts
from reference_impls.core.recipe import Recipe
from reference_impls.losses import attention_mse, forward_kl, hidden_mse
from reference_impls.losses.numerics import check_in_range
from reference_impls.registry import register
from reference_impls.white_box.features import (
    FeatureLoss,
    attention_scores,
    forward_with_projections,
    layer_map,
    projector,
)


@dataclass
class TinyBERTLoss(FeatureLoss):
    """TinyBERT's two stages: layer-wise MSE, then the soft cross-entropy on the predictions."""

    intermediate_fraction: float
    temperature: float
    shared_projection: bool
    intermediate: bool = True

    def prepare(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        s, t = student.config, teacher.config
        if s.num_attention_heads != t.num_attention_heads:
            raise ValueError(
                f"TinyBERT compares attention head by head: the student has {s.num_attention_heads} heads, "
                f"the teacher {t.num_attention_heads}; use minilmv2 (relation heads) for other head counts"
            )
        self.mapping = layer_map(t.num_hidden_layers, s.num_hidden_layers, "uniform")
        names = ["all"] if self.shared_projection else ["embeddings", "hidden"]
        self.attach(student, {name: projector(s.hidden_size, t.hidden_size) for name in names})

    def schedule(self, step: int, steps: int) -> None:
        self.intermediate = step < round(self.intermediate_fraction * steps)

    def _project(self, name: str, states: Tensor) -> Tensor:
        return self.projectors["all" if self.shared_projection else name](states)

    def __call__(
        self, student: torch.nn.Module, teacher: Any, batch: dict[str, Tensor], vocab_size: Any
    ) -> Tensor:
        if teacher is None or self.projectors is None:
            raise ValueError("TinyBERT needs the teacher model and prepare() before training")
        if not self.intermediate:  # the prediction stage
            s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            with torch.no_grad():
                t_logits = teacher(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            return forward_kl(s_logits, t_logits, temperature=self.temperature)
        mask = batch["attention_mask"]
        student_layers = list(range(student.config.num_hidden_layers))
        teacher_layers = [self.mapping[m + 1] - 1 for m in student_layers]  # block index of g(m)
        s, s_qkv = forward_with_projections(student, batch, student_layers)
        with torch.no_grad():
            t, t_qkv = forward_with_projections(teacher, batch, sorted(set(teacher_layers)))
        loss = hidden_mse(self._project("embeddings", s.hidden_states[0]), t.hidden_states[0], mask)
        heads = student.config.num_attention_heads
        for m, g in zip(student_layers, teacher_layers, strict=True):
            loss = loss + hidden_mse(
                self._project("hidden", s.hidden_states[m + 1]), t.hidden_states[g + 1], mask
            )
            s_scores = attention_scores(s_qkv[m]["query"], s_qkv[m]["key"], heads)
            t_scores = attention_scores(t_qkv[g]["query"], t_qkv[g]["key"], heads)
            loss = loss + attention_mse(s_scores, t_scores, mask)
        return loss


@register("tinybert")
def tinybert_recipe(
    intermediate_epochs: int = 10,
    prediction_epochs: int = 3,
    temperature: float = 1.0,
    shared_projection: bool = True,
) -> Recipe:
    """TinyBERT's task-specific distillation on the classification suite.

    Args:
        intermediate_epochs: The README's epochs of layer-wise distillation (10) and
        prediction_epochs: of prediction-layer distillation (3): the run's step budget is split
            in this ratio, layer-wise first.
        temperature: Temperature t of the prediction stage (paper Eq. 10: t = 1 works well).
        shared_projection: One ``fit_dense`` for embeddings and hidden states (the code); False
            learns ``W_e`` and ``W_h`` apart (the paper).
    """
    if intermediate_epochs < 0 or prediction_epochs < 0 or intermediate_epochs + prediction_epochs == 0:
        raise ValueError(
            f"the stages need epochs ≥ 0, not both 0; got intermediate_epochs={intermediate_epochs}, "
            f"prediction_epochs={prediction_epochs}"
        )
    check_in_range("temperature", temperature, 0.0, float("inf"), open_low=True)
    intermediate_fraction = intermediate_epochs / (intermediate_epochs + prediction_epochs)
    return Recipe(
        method_id="tinybert",
        data=LabelledTexts(),
        loss=TinyBERTLoss(intermediate_fraction, temperature, shared_projection),
        evaluation="classification",
    )
