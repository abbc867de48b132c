r"""Vanilla KD (Hinton, Vinyals & Dean 2015): soft targets at temperature T plus hard labels.

Per response token, the student minimises

$$\mathcal{L} = (1-\alpha)\,\mathrm{CE}\big(y, \mathrm{softmax}(z_s)\big)
 + \alpha\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(z_t/T)\,\big\|\,\mathrm{softmax}(z_s/T)\big).$$

Algorithm (the paper's §2, applied per token as in the "KD" baselines of LLM papers):

1. Freeze a trained teacher.
2. For every training sequence, compute the teacher's logits (no gradient) and the student's.
3. Soft term: KL between the temperature-softened distributions, times T² so that its gradient
   keeps the hard term's scale when T changes (soft-target gradients scale as 1/T²).
4. Hard term: ordinary cross-entropy with the reference tokens, at T = 1.
5. Minimise the α-weighted sum; the student is used at T = 1.

The loss itself is `reference_impls.losses.vanilla_kd_loss`; this module pairs it with the
dataset's responses. BibTeX: ``hinton2015distilling``.
"""

from __future__ import annotations

from torch import Tensor

from reference_impls.core.data_sources import DatasetResponses
from reference_impls.core.recipe import Recipe
from reference_impls.losses import vanilla_kd_loss
from reference_impls.registry import register


@register("vanilla-kd")
def vanilla_kd_recipe(temperature: float = 2.0, alpha: float = 0.5) -> Recipe:
    """Hinton et al.'s soft-target KD on the dataset's responses.

    Args:
        temperature: Softening temperature T of both models in the soft term (paper §2: a tuned
            hyper-parameter; 2.0 suits the embedded task).
        alpha: Weight α of the soft term; 1 − α weighs the hard-label cross-entropy (0.5 is the
            usual library default).

    Returns:
        The recipe run by ``kdatlas run vanilla-kd``.
    """

    def objective(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor) -> Tensor:
        if teacher_logits is None:
            raise ValueError("vanilla-kd needs the teacher's logits (white-box access)")
        return vanilla_kd_loss(student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha)

    return Recipe(
        method_id="vanilla-kd",
        data=DatasetResponses(),
        loss=objective,
    )
