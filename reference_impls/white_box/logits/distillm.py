r"""DistiLLM (Ko et al., ICML 2024): skew KL with adaptive student-generated outputs.

Two changes to word-level KD, each a component of its own:

1. **The divergence**: the skew forward KL $\mathrm{KL}(p\,\|\,\alpha p + (1-\alpha) q_\theta)$ (or
   the skew reverse KL), whose mixture bounds the log-ratio and so the gradient
   (`reference_impls.losses.skew_forward_kl`, ``skew_reverse_kl``; α = 0.1, ``--skew-alpha``).
2. **The data source**: an adaptive off-policy schedule of student-generated outputs with a
   replay buffer (`reference_impls.core.data_sources.AdaptiveStudentReplay`): the probability
   of using student outputs grows each time the validation loss rises, fresh samples are drawn
   with a probability that decays over training, and otherwise earlier samples are replayed —
   far fewer generation calls than fully on-policy training.

Defaults are the official scripts' (``scripts/gpt2/distillm/train_0.1B_1.5B.sh``:
``--type adaptive-sfkl --skew-alpha 0.1 --init-threshold 0.0 --loss-eps 0.1 --capacity 1000``,
``kd_ratio`` 1, i.e. no cross-entropy term). Key: ``ko2024distillm``.
"""

from __future__ import annotations

from reference_impls import losses
from reference_impls.core.data_sources import AdaptiveStudentReplay
from reference_impls.core.logits_loss import WordLevelObjective
from reference_impls.core.recipe import Recipe
from reference_impls.registry import register

DIVERGENCES = {"sfkl": losses.skew_forward_kl, "srkl": losses.skew_reverse_kl}


@register("distillm")
def distillm_recipe(
    divergence: str = "sfkl",
    alpha: float = 0.1,
    init_threshold: float = 0.0,
    loss_eps: float = 0.1,
    capacity: int = 1000,
    temperature: float = 1.0,
) -> Recipe:
    """DistiLLM: skew KL (``sfkl``) or skew reverse KL (``srkl``) on adaptively replayed student outputs.

    Args:
        divergence: ``"sfkl"`` (the scripts' ``adaptive-sfkl``) or ``"srkl"``.
        alpha: Skew α (``--skew-alpha``, 0.1).
        init_threshold: Initial probability threshold of student outputs (``--init-threshold``).
        loss_eps: Validation-loss increase that raises the threshold by 0.1 (``--loss-eps``).
        capacity: Replay buffer size in batches (``--capacity``).
        temperature: Student sampling temperature (the scripts sample at 1.0, top-p 1.0).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    objective = WordLevelObjective("distillm", DIVERGENCES[divergence], {"alpha": alpha})
    source = AdaptiveStudentReplay(
        init_threshold=init_threshold, loss_eps=loss_eps, capacity=capacity, temperature=temperature
    )
    return Recipe(
        method_id="distillm",
        data=source,
        loss=objective,
    )
