r"""Word-level (token-level) KD with a selectable divergence, on the dataset's responses.

The recipe every white-box LLM paper starts from: run teacher and student on the same prompt +
reference response, and minimise a divergence between their next-token distributions at each
response position,

$$\mathcal{L}(\theta) = \frac{1}{|\mathcal{T}|}\sum_{t\in\mathcal{T}} D\big(p(\cdot\mid y_{<t},x),\ q_\theta(\cdot\mid y_{<t},x)\big).$$

At large vocabularies the same objective is computed by `reference_impls.losses.fused` from the
final hidden states and LM heads, without materialising the logits (`reference_impls.core.logits_loss`;
the training loop picks that path from `FUSED_MIN_LOGITS` logits entries on; the two paths are
tested to agree).

Each divergence of `reference_impls.losses` is its own taxonomy entry and is registered here
under that entry's id, with the hyper-parameter defaults the entry cites. Only the divergence
changes between them; the sequences are always the dataset's responses (the "fixed" data source).
Methods that change the sequences (SeqKD, GKD, MiniLLM, DistiLLM) live in their own modules.

Papers: ``hinton2015distilling``, ``kim2016sequence`` (word-level KD), ``gu2024minillm`` (reverse
KL), ``agarwal2024gkd`` (generalized JSD), ``wen2023fdistill`` (TVD), ``ko2024distillm`` (skew
KL), ``wu2025akl`` (adaptive KL), ``jung2025todi`` (ToDi).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from reference_impls import losses
from reference_impls.core.data_sources import DatasetResponses
from reference_impls.core.logits_loss import WordLevelObjective
from reference_impls.core.recipe import Recipe
from reference_impls.registry import register


def _word_level_recipe(method_id: str, divergence: Callable[..., Tensor], **hyperparameters: float) -> Recipe:
    """Pair a divergence (with its hyper-parameters bound) with the dataset's responses."""
    return Recipe(
        method_id=method_id,
        data=DatasetResponses(),
        loss=WordLevelObjective(method_id, divergence, dict(hyperparameters)),
    )


@register("forward-kl")
def forward_kl_recipe(temperature: float = 1.0) -> Recipe:
    """Forward KL, $\\mathrm{KL}(p\\,\\|\\,q_\\theta)$ (``hinton2015distilling``, ``kim2016sequence``)."""
    return _word_level_recipe("forward-kl", losses.forward_kl, temperature=temperature)


@register("reverse-kl")
def reverse_kl_recipe(temperature: float = 1.0) -> Recipe:
    """Reverse KL, $\\mathrm{KL}(q_\\theta\\,\\|\\,p)$ (``gu2024minillm``)."""
    return _word_level_recipe("reverse-kl", losses.reverse_kl, temperature=temperature)


@register("generalized-jsd")
def generalized_jsd_recipe(beta: float = 0.5, temperature: float = 1.0) -> Recipe:
    """Generalized JSD with the GKD/TRL β convention, β = 0.5 by default (``agarwal2024gkd``)."""
    return _word_level_recipe("generalized-jsd", losses.generalized_jsd, beta=beta, temperature=temperature)


@register("total-variation")
def total_variation_recipe(temperature: float = 1.0) -> Recipe:
    """Total variation distance, $\\frac12\\sum_v|p-q_\\theta|$ (``wen2023fdistill``)."""
    return _word_level_recipe("total-variation", losses.total_variation, temperature=temperature)


@register("skew-forward-kl")
def skew_forward_kl_recipe(alpha: float = 0.1, temperature: float = 1.0) -> Recipe:
    """Skew forward KL with α = 0.1, DistiLLM's released default (``ko2024distillm``)."""
    return _word_level_recipe("skew-forward-kl", losses.skew_forward_kl, alpha=alpha, temperature=temperature)


@register("skew-reverse-kl")
def skew_reverse_kl_recipe(alpha: float = 0.1, temperature: float = 1.0) -> Recipe:
    """Skew reverse KL with α = 0.1, DistiLLM's released default (``ko2024distillm``)."""
    return _word_level_recipe("skew-reverse-kl", losses.skew_reverse_kl, alpha=alpha, temperature=temperature)


@register("adaptive-kl")
def adaptive_kl_recipe(mu: float = 0.5, temperature: float = 1.0) -> Recipe:
    """Adaptive KL with head mass μ = 0.5, the authors' released default (``wu2025akl``)."""
    return _word_level_recipe("adaptive-kl", losses.adaptive_kl, mu=mu, temperature=temperature)


@register("todi")
def todi_recipe(temperature: float = 2.0) -> Recipe:
    """ToDi at T = 2.0, the KD_TEMP of the authors' scripts (jungseongryong/ToDi,
    scripts/gpt2/vanilla_kd_gpt2_base.sh, shared by every KD_OBJ) (``jung2025todi``)."""
    return _word_level_recipe("todi", losses.todi, temperature=temperature)
