r"""Selective Reflection-Tuning (Li et al., Findings of ACL 2024): the student chooses the teacher's rewrites.

Reflection-Tuning lets the teacher rewrite every instruction and response; a rewrite the teacher
finds better is not necessarily better *for the student*. Here the student decides, from its
own perplexities, which rewrites it accepts. Two ratios, computed with the student $\theta$:

$$\mathrm{IFD}_\theta(x, y) = \frac{\mathrm{PPL}_\theta(y \mid x)}{\mathrm{PPL}_\theta(y)}, \qquad
\text{r-IFD}_\theta(x, y) = \frac{\mathrm{PPL}_\theta(x \mid p_{\mathrm{rev}}(y))}{\mathrm{PPL}_\theta(x)},$$

where $\mathrm{PPL}(t \mid c) = \exp(-\tfrac{1}{|t|}\sum_i \log p_\theta(t_i \mid c, t_{<i}))$ over the
tokens of $t$ (``PipelineContext.response_nll`` returns the exponent, so a ratio is
$\exp(\mathrm{nll}_{\mathrm{cond}} - \mathrm{nll}_{\mathrm{alone}})$) and $p_{\mathrm{rev}}(y)$ is the
"guess the instruction" prompt around the response. A high IFD means the instruction is hard to
follow (the student gains little from it); a low r-IFD means the response points back to its
instruction (it is *feasible* to learn from). A ratio $\ge 1$ means the conditioning text does
not help the student at all: the pair is misaligned.

Algorithm (``selection_code/data_analysis.py``, ``put_analysis_to_data.py``, ``get_select_data.py``
of tianyi-lab/Reflection_Tuning):

1. Reflection (see ``reflection-tuning``): for each original pair $(x_0, y_0)$ the teacher writes
   $(x^{*}, y^{*})$ (instruction reflection), $y_0'$ (response reflection of the original) and
   $y^{*\prime}$ (response reflection of the new pair): four versions ``original``,
   ``instruction`` $(x^{*}, y^{*})$, ``response`` $(x_0, y_0')$ and ``both`` $(x^{*}, y^{*\prime})$.
2. Score every version with the *raw* student (LLaMA2-7B in the paper; here the embedded student
   trained briefly on the seed tasks with the loss on every token, a stand-in for a pre-trained
   model that models instructions as well as responses).
3. Selective instruction reflection: keep $x^{*}$ iff $\mathrm{IFD}(x^{*}, y^{*}) > \mathrm{IFD}(x_0, y_0)$
   (strictly: the new instruction is more challenging for the student).
4. Selective response reflection, on the instruction kept: keep the rewritten response iff its
   r-IFD is strictly lower than the unrewritten one's.
5. The chosen version is written out only if its IFD and r-IFD are both $< 1$ and its response was
   the rewritten one: the released script counts, but does not write, the pairs whose rewrite was
   rejected (``keep_rejected_responses`` writes them too).
6. Optionally keep the ``top_k`` pairs by IFD (highest first, Cherry-LLM's rule; off by default,
   the released script writes every selected pair). Fine-tune the student on the result.

BibTeX: ``li2024selective``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel

from reference_impls.black_box.filters import count
from reference_impls.black_box.instruction_following.reflection_tuning import (
    Pair,
    alpaca_pool,
    check_reflection_options,
    correct_rate,
    reflect_instructions,
    reflect_responses,
)
from reference_impls.black_box.pipeline import DistilledData, PipelineContext, TextPipeline
from reference_impls.core.recipe import Recipe
from reference_impls.core.sft import TrainingExample
from reference_impls.registry import register

# The four versions of a pair, in the order `select_version` sees them.
VERSIONS = ("original", "instruction", "response", "both")
REWRITTEN_RESPONSE = ("response", "both")  # the versions the released script writes out


def reverse_prompt(response: str) -> str:
    """The "guess the instruction" prompt in front of an instruction, for r-IFD.

    The paper's prompt (``data_analysis.py``) asks, in English, to guess the instruction of the
    given response; the embedded student reads characters, so the suite's compact meta-task
    style stands in for it: ``"guess: <response> >"``.
    """
    return f"guess: {response} >"


@dataclass(frozen=True)
class Scores:
    """The student's statistics of one (instruction, response) pair."""

    ifd: float
    rifd: float


def student_scores(context: PipelineContext, model: PreTrainedModel, pairs: Sequence[Pair]) -> list[Scores]:
    """IFD and r-IFD of each pair under ``model`` (each distinct perplexity computed once).

    ``IFD = exp(nll(y | x) - nll(y))`` and ``r-IFD = exp(nll(x | reverse_prompt(y)) - nll(x))``,
    with ``nll`` the mean token NLL of `PipelineContext.response_nll` (``""`` as the condition
    gives the text after BOS alone, as the paper's whole-text perplexity does).
    """
    keys: dict[tuple[str, str], int] = {}
    for x, y in pairs:
        for key in ((x, y), ("", y), (reverse_prompt(y), x), ("", x)):
            keys.setdefault(key, len(keys))
    nll = dict(zip(keys, context.response_nll(model, list(keys)), strict=True))
    return [
        Scores(
            ifd=math.exp(nll[(x, y)] - nll[("", y)]),
            rifd=math.exp(nll[(reverse_prompt(y), x)] - nll[("", x)]),
        )
        for x, y in pairs
    ]


def select_version(
    original: Scores, instruction: Scores, response: Scores, both: Scores, *, ceiling: float = 1.0
) -> tuple[str, bool]:
    """``get_select_data.py``'s decision for one pair: the version the student prefers, and
    whether it passes the ceiling (IFD and r-IFD both strictly below ``ceiling``).

    Ties reject the rewrite (``>`` for IFD, ``<`` for r-IFD are strict); NaN scores compare false.
    """
    if instruction.ifd > original.ifd:  # the new instruction is more challenging: keep x*
        chosen = "both" if both.rifd < instruction.rifd else "instruction"
    else:
        chosen = "response" if response.rifd < original.rifd else "original"
    scores = {"original": original, "instruction": instruction, "response": response, "both": both}[chosen]
    return chosen, scores.ifd < ceiling and scores.rifd < ceiling


def train_scorer(context: PipelineContext, steps: int) -> PreTrainedModel:
    """The scoring student, a stand-in for a *pre-trained* model: the embedded student trained
    on the seed tasks as plain text (loss on every token), read both ways: ``x y`` and
    ``reverse_prompt(y) x``.

    LLaMA2-7B reads the paper's English "guess the instruction" prompt zero-shot; the embedded
    student reads nothing it was not trained on, so its pre-training text includes the reverse
    reading of the seed tasks (the seeds only, never the pool being scored).
    """
    model = context.new_student()
    texts = [((e.prompt, True), (e.response, True)) for e in context.seeds]
    texts += [((reverse_prompt(e.response), True), (e.prompt, True)) for e in context.seeds]
    context.fine_tune(
        model, [TrainingExample(t) for t in texts], steps, "Scoring student (seed tasks as text)"
    )
    return model


@register("selective-reflection-tuning")
def selective_reflection_recipe(
    num_instructions: int = 600,
    instruction_operation: str = "deepen",
    temperature: float = 0.0,
    score_ceiling: float = 1.0,
    keep_rejected_responses: bool = False,
    top_k: int | None = None,
    scorer_steps: int = 100,
) -> Recipe:
    """Reflect on the Alpaca pool with the teacher, let the student select, train on the selection.

    Args:
        num_instructions: Size of the original pool (Alpaca's 52K in the paper; the embedded
            Alpaca run's size, so the pool is shared through the cache).
        instruction_operation: The suite's stand-in for instruction reflection (``"deepen"``:
            a harder instruction on the same input; ``"widen"``: a different one of the same depth).
        temperature: Sampling temperature of the reflection calls (0.0, ``reflect_response.py``).
        score_ceiling: The selected version's IFD and r-IFD must both be below this (``< 1``,
            ``get_select_data.py``).
        keep_rejected_responses: Also write the pairs whose rewritten response was rejected (the
            two ``new_data.append`` lines ``get_select_data.py`` leaves commented out); False as released.
        top_k: Keep only the ``top_k`` selected pairs of highest IFD (None: all, as released).
        scorer_steps: Seed-task training steps of the scoring student (the paper scores with the
            raw pre-trained student; the embedded student needs a little training to have any
            statistics).
    """
    check_reflection_options(num_instructions, instruction_operation, temperature)
    if not score_ceiling > 0:
        raise ValueError(f"score_ceiling must be > 0, got {score_ceiling}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or >= 1, got {top_k}")
    if scorer_steps < 1:
        raise ValueError(f"scorer_steps must be >= 1, got {scorer_steps}")

    def build(context: PipelineContext) -> DistilledData:
        pool = alpaca_pool(context, num_instructions)
        new_pairs = reflect_instructions(
            context, pool, operation=instruction_operation, temperature=temperature
        )
        better_original = reflect_responses(context, pool, temperature=temperature)
        better_new = reflect_responses(context, new_pairs, temperature=temperature)
        versions = {
            "original": pool,
            "instruction": new_pairs,
            "response": [(x, y) for (x, _), y in zip(pool, better_original, strict=True)],
            "both": [(x, y) for (x, _), y in zip(new_pairs, better_new, strict=True)],
        }
        scorer = train_scorer(context, scorer_steps)
        scores = {name: student_scores(context, scorer, versions[name]) for name in VERSIONS}
        selected = select_pairs(
            versions,
            scores,
            context.stats,
            ceiling=score_ceiling,
            keep_rejected_responses=keep_rejected_responses,
            top_k=top_k,
        )
        stats = context.stats
        stats["pool: responses correct"] = correct_rate(pool)
        stats["recycled (V1, every pair): responses correct"] = correct_rate(versions["both"])
        stats["selected: responses correct"] = correct_rate(selected)
        return DistilledData([TrainingExample.single(x, y) for x, y in selected])

    return Recipe(
        method_id="selective-reflection-tuning",
        data=TextPipeline(build),
        evaluation="instructions",
    )


def select_pairs(
    versions: dict[str, Sequence[Pair]],
    scores: dict[str, Sequence[Scores]],
    stats: dict[str, int],
    *,
    ceiling: float = 1.0,
    keep_rejected_responses: bool = False,
    top_k: int | None = None,
) -> list[Pair]:
    """The student's selection over aligned ``versions`` and their ``scores`` (keys `VERSIONS`,
    one entry per original pair), in pool order (by IFD, highest first, with ``top_k``).

    Counts each decision in ``stats``: ``selection: <version> (kept | not written | over ceiling)``.
    """
    chosen: list[tuple[float, Pair]] = []
    for i in range(len(versions["original"])):
        version, passes = select_version(*(scores[name][i] for name in VERSIONS), ceiling=ceiling)
        written = passes and (version in REWRITTEN_RESPONSE or keep_rejected_responses)
        count(
            stats,
            f"selection: {version} ({'kept' if written else 'not written' if passes else 'over ceiling'})",
        )
        if written:
            chosen.append((scores[version][i].ifd, versions[version][i]))
    if top_k is not None:
        chosen = sorted(chosen, key=lambda item: -item[0])[:top_k]
    stats["selection: kept"] = len(chosen)
    return [pair for _, pair in chosen]
