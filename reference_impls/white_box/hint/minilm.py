r"""MiniLM (Wang et al., NeurIPS 2020): deep self-attention distillation of the last layer only.

The student mimics the teacher's *last* Transformer layer through two distributions per head,
which are ``seq × seq`` and so need no projection whatever the widths (§3.1):

$$\mathcal{L} = \underbrace{\frac{1}{A_h |x|}\sum_{a,t} \mathrm{KL}\big(A^{t}_{T,a} \,\|\, A^{t}_{S,a}\big)}_{\text{attention transfer}}
 + \underbrace{\frac{1}{A_h |x|}\sum_{a,t} \mathrm{KL}\big(VR^{t}_{T,a} \,\|\, VR^{t}_{S,a}\big)}_{\text{value relation}},
 \qquad VR_a = \mathrm{softmax}\big(V_a V_a^\top / \sqrt{d_k}\big)$$

Algorithm:

1. Freeze the teacher (MiniLM distils the *pre-trained* model, task-agnostically).
2. For each text: the last layer's attention distributions per head, and its values split into
   the same heads (hooks on the value projection).
3. Minimise the two KLs, teacher to student (`reference_impls.losses.attention_kl`,
   `reference_impls.losses.relation_kl` on the values).
4. Fine-tune the distilled student on the task's labels.

Preconditions: the student has the teacher's number of heads (the equations pair heads one to
one; the paper's students keep 12); MiniLMv2 (`minilmv2`) lifts that. The teacher assistant of
§3.3 (distil into a mid-size model first when the student has at most half the layers and half
the width) is not done. Here both stages run on the suite's training texts within the run's step
budget: the first ``distil_fraction`` (0.5, our choice: the paper distils on a pre-training corpus,
then fine-tunes per task) distils, the rest fine-tunes; the teacher is the suite's fine-tuned
classifier, whose encoder is the masked LM's after fine-tuning. BibTeX: ``wang2020minilm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from reference_impls.core.encoders import LabelledTexts
from reference_impls.core.recipe import Recipe
from reference_impls.losses import attention_kl, relation_kl
from reference_impls.losses.numerics import check_unit_interval
from reference_impls.registry import register
from reference_impls.white_box.features import DistilThenFineTune, forward_with_projections


@dataclass
class MiniLMLoss(DistilThenFineTune):
    """Last-layer attention transfer plus value relation, then fine-tuning."""

    distil_fraction: float = 0.5

    def prepare(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        if student.config.num_attention_heads != teacher.config.num_attention_heads:
            raise ValueError(
                f"MiniLM pairs heads one to one: the student has {student.config.num_attention_heads} heads, "
                f"the teacher {teacher.config.num_attention_heads}; use minilmv2 for other head counts"
            )

    def distillation(
        self, student: torch.nn.Module, teacher: torch.nn.Module, batch: dict[str, Tensor]
    ) -> Tensor:
        mask, heads = batch["attention_mask"], student.config.num_attention_heads
        last_s, last_t = student.config.num_hidden_layers - 1, teacher.config.num_hidden_layers - 1
        s, s_qkv = forward_with_projections(student, batch, [last_s], attentions=True)
        with torch.no_grad():
            t, t_qkv = forward_with_projections(teacher, batch, [last_t], attentions=True)
        transfer = attention_kl(s.attentions[-1], t.attentions[-1], mask)
        value_relation = relation_kl(s_qkv[last_s]["value"], t_qkv[last_t]["value"], heads, mask)
        return transfer + value_relation


@register("minilm")
def minilm_recipe(distil_fraction: float = 0.5) -> Recipe:
    """MiniLM's deep self-attention distillation, then fine-tuning, on the classification suite.

    Args:
        distil_fraction: Share of the steps spent distilling before fine-tuning on the labels
            (ours; the paper distils on a pre-training corpus, then fine-tunes each task).
    """
    check_unit_interval("distil_fraction", distil_fraction)
    return Recipe(
        method_id="minilm",
        data=LabelledTexts(),
        loss=MiniLMLoss(distil_fraction),
        evaluation="classification",
    )
