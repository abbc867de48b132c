r"""MiniLMv2 (Wang, Bao, Huang, Dong & Wei, Findings of ACL 2021): multi-head self-attention relations.

MiniLM matched attention distributions head by head, which ties the student to the teacher's head
count. MiniLMv2 instead concatenates a layer's queries (keys, values) over the heads, splits them
again into ``R`` *relation heads* of width $d_r$ — the same ``R`` for both models, whatever their
own head counts and widths — and matches the self-relations:

$$\mathcal{L} = \sum_{A \in \{Q, K, V\}} \frac{1}{R\,|x|} \sum_{r,t}
 \mathrm{KL}\Big(\mathrm{softmax}\big(\tfrac{A_{T,r} A_{T,r}^\top}{\sqrt{d_r}}\big)_t \,\Big\|\,
 \mathrm{softmax}\big(\tfrac{A_{S,r} A_{S,r}^\top}{\sqrt{d_r}}\big)_t\Big)$$

Algorithm:

1. Freeze the teacher; choose its layer (the last one for base-size teachers; an upper-middle
   one for large teachers, which the paper found to transfer better) and the student's last.
2. For each text: the queries, keys and values of both layers (hooks on the projections).
3. Minimise the Q-Q, K-K and V-V relation KLs, equally weighted
   (`reference_impls.losses.relation_kl`).
4. Fine-tune the distilled student on the task's labels.

Defaults: ``relation_heads=4`` gives the embedded student relation heads of width 16, the width
of the 48 relation heads reported for base-size (768-wide) teachers; that count and the equal
weights come from third-party reimplementations (PaddleNLP's PP-MiniLM, bloomberg's
``minilmv2``), not from the paper's text, which we could not check. Both stages share the run's
budget as in `reference_impls.white_box.hint.minilm`. BibTeX: ``wang2021minilmv2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from reference_impls.core.encoders import LabelledTexts
from reference_impls.core.recipe import Recipe
from reference_impls.losses import relation_kl
from reference_impls.losses.numerics import check_unit_interval
from reference_impls.registry import register
from reference_impls.white_box.features import DistilThenFineTune, forward_with_projections

RELATIONS = ("query", "key", "value")


@dataclass
class MiniLMv2Loss(DistilThenFineTune):
    """Q-Q, K-K, V-V relation KLs of one teacher layer and the student's last, then fine-tuning."""

    relation_heads: int = 4
    teacher_layer: int = -1
    distil_fraction: float = 0.5

    def prepare(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        depth = teacher.config.num_hidden_layers
        if not -depth <= self.teacher_layer < depth:
            raise ValueError(f"teacher_layer {self.teacher_layer} is outside the teacher's {depth} layers")
        for name, config in (("student", student.config), ("teacher", teacher.config)):
            if config.hidden_size % self.relation_heads:
                raise ValueError(
                    f"relation_heads={self.relation_heads} must divide the {name}'s width {config.hidden_size}"
                )

    def distillation(
        self, student: torch.nn.Module, teacher: torch.nn.Module, batch: dict[str, Tensor]
    ) -> Tensor:
        mask = batch["attention_mask"]
        last = student.config.num_hidden_layers - 1
        layer = self.teacher_layer % teacher.config.num_hidden_layers
        _, s_qkv = forward_with_projections(student, batch, [last])
        with torch.no_grad():
            _, t_qkv = forward_with_projections(teacher, batch, [layer])
        return sum(relation_kl(s_qkv[last][a], t_qkv[layer][a], self.relation_heads, mask) for a in RELATIONS)


@register("minilmv2")
def minilmv2_recipe(relation_heads: int = 4, teacher_layer: int = -1, distil_fraction: float = 0.5) -> Recipe:
    """MiniLMv2's multi-head self-attention relation distillation, then fine-tuning.

    Args:
        relation_heads: Relation heads R, the same for both models; must divide both widths.
        teacher_layer: The teacher layer to distil (0-based, negative from the top; -1 the last,
            as for base-size teachers).
        distil_fraction: Share of the steps spent distilling before fine-tuning on the labels.
    """
    if relation_heads < 1:
        raise ValueError(f"relation_heads must be ≥ 1, got {relation_heads}")
    check_unit_interval("distil_fraction", distil_fraction)
    return Recipe(
        method_id="minilmv2",
        data=LabelledTexts(),
        loss=MiniLMv2Loss(relation_heads, teacher_layer, distil_fraction),
        evaluation="classification",
    )
