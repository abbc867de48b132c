r"""GKD — generalized knowledge distillation (Agarwal et al., ICLR 2024).

The student is trained on a *mixture* of sequences: with probability $\lambda$ on sequences it
samples itself (on-policy), otherwise on the dataset's responses (or teacher samples with
``seq_kd``), always with a token-level divergence to the teacher on those sequences:

$$\mathcal{L}(\theta) = (1-\lambda)\,\mathbb{E}_{(x,y)\sim \mathcal{D}}\big[D(p\,\|\,q_\theta)(y\mid x)\big]
 + \lambda\,\mathbb{E}_{x\sim\mathcal{D}}\,\mathbb{E}_{y\sim q_\theta(\cdot\mid x)}\big[D(p\,\|\,q_\theta)(y\mid x)\big],$$

with $D$ the generalized JSD$_\beta$ averaged over the response tokens. No gradient flows
through the sampling. The two axes are separate components: the divergence is
`reference_impls.losses.generalized_jsd`, the data source
`reference_impls.core.data_sources.MixedStudentData`.

Defaults follow TRL's ``GKDConfig`` (``lmbda=0.5``, ``beta=0.5``, ``temperature=0.9`` for
sampling, ``seq_kd=False``; ``GKDTrainer.compute_loss`` calls ``generalized_jsd_loss`` without a
temperature, i.e. the loss is at T = 1). Key: ``agarwal2024gkd``.
"""

from __future__ import annotations

from reference_impls import losses
from reference_impls.core.data_sources import MixedStudentData
from reference_impls.core.logits_loss import WordLevelObjective
from reference_impls.core.recipe import Recipe
from reference_impls.registry import register


@register("gkd")
def gkd_recipe(lam: float = 0.5, beta: float = 0.5, temperature: float = 0.9, seq_kd: bool = False) -> Recipe:
    """GKD: generalized JSD$_\\beta$ on student samples with probability λ, else dataset responses.

    Args:
        lam: Probability λ of an on-policy step (TRL ``lmbda``; paper §3: λ = 1 is fully
            on-policy, λ = 0 supervised KD).
        beta: β of the generalized JSD (TRL ``beta``; β → 0 forward-KL-like, β → 1 reverse-KL-like).
        temperature: Sampling temperature of the student samples (TRL ``temperature``).
        seq_kd: On the off-policy steps, sample from the teacher instead of using the dataset's
            responses (TRL ``seq_kd``).
    """
    objective = WordLevelObjective("gkd", losses.generalized_jsd, {"beta": beta})
    return Recipe(
        method_id="gkd",
        data=MixedStudentData(lam=lam, temperature=temperature, seq_kd=seq_kd),
        loss=objective,
    )
