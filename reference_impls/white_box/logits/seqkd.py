r"""Sequence-level KD (Kim & Rush 2016): train the student on the teacher's own outputs.

Sequence-level KL to the teacher sums over every possible output sequence,

$$\mathcal{L}_{\mathrm{SeqKD}} = -\sum_{s} p(s\mid x)\,\log q_\theta(s\mid x)
 \;\approx\; -\log q_\theta(\hat y\mid x),\qquad \hat y \approx \arg\max_s p(s\mid x),$$

which is intractable; Kim & Rush approximate the teacher's distribution by its mode, found with
beam search. In LLM papers "SeqKD" is the same idea: supervised fine-tuning on teacher-generated
responses.

Algorithm:

1. Freeze the trained teacher.
2. Decode the teacher once on every training prompt (greedy here; beam search in the paper).
3. Replace each reference response by the teacher's output.
4. Train the student with ordinary token cross-entropy on these pairs.

The teacher is needed only for decoding, never for logits during training, so the same recipe
works with a black-box teacher that returns text. BibTeX: ``kim2016sequence``.
"""

from __future__ import annotations

from reference_impls.core.data_sources import TeacherGenerated
from reference_impls.core.recipe import Recipe
from reference_impls.core.training import cross_entropy_objective
from reference_impls.registry import register


@register("seqkd")
def seqkd_recipe(decoding: str = "greedy") -> Recipe:
    """Cross-entropy on the teacher's decoded responses.

    Args:
        decoding: How the teacher's responses are produced; ``"greedy"`` (Kim & Rush use beam
            search, which the embedded run does not need at this scale).

    Returns:
        The recipe run by ``kdatlas run seqkd``.
    """
    return Recipe(
        method_id="seqkd",
        data=TeacherGenerated(decoding=decoding),
        loss=cross_entropy_objective,  # on the teacher's tokens: the teacher is not run in training
    )
