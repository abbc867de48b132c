r"""The loss API every kdatlas method reuses: token-level divergences with one convention.

`divergences` holds the losses and states their convention once (shapes, alignment, temperature,
numerics, infinite logits, reduction); `numerics` the checks and reductions they share; `fused`
the same divergences computed chunk by chunk from hidden states and LM heads, for large
vocabularies; `features` the hint losses between hidden states, attention maps and relations. Import from here: ``from reference_impls.losses import forward_kl``.
"""

from reference_impls.losses.divergences import (
    DIVERGENCES,
    adaptive_kl,
    adaptive_kl_weight,
    forward_kl,
    generalized_jsd,
    get_divergence,
    hard_label_ce,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    todi,
    total_variation,
    vanilla_kd_loss,
)
from reference_impls.losses.features import (
    attention_kl,
    attention_mse,
    hidden_cosine,
    hidden_mse,
    normalized_distance,
    relation_kl,
    self_relation_log_probs,
)
from reference_impls.losses.numerics import IGNORE_INDEX, Reduction, VocabularyMismatchError

__all__ = [
    "DIVERGENCES",
    "IGNORE_INDEX",
    "Reduction",
    "VocabularyMismatchError",
    "adaptive_kl",
    "adaptive_kl_weight",
    "attention_kl",
    "attention_mse",
    "forward_kl",
    "generalized_jsd",
    "get_divergence",
    "hard_label_ce",
    "hidden_cosine",
    "hidden_mse",
    "normalized_distance",
    "relation_kl",
    "reverse_kl",
    "self_relation_log_probs",
    "skew_forward_kl",
    "skew_reverse_kl",
    "todi",
    "total_variation",
    "vanilla_kd_loss",
]
