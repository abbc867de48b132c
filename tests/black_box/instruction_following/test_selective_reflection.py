"""Selective Reflection-Tuning: IFD and r-IFD against a direct computation, the student's
selection rules on crafted scores (ties, the ceiling, NaN), and the pipeline end to end with an
exact teacher. The reflection it builds on (V1) is tested in test_reflection_tuning.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from reference_impls.black_box.instruction_following.selective_reflection import (
    VERSIONS,
    Scores,
    reverse_prompt,
    select_pairs,
    select_version,
    selective_reflection_recipe,
    student_scores,
)
from reference_impls.core.models import build_student
from reference_impls.core.tokenizer import build_tokenizer
from tests.support.fakes import make_context

PAIRS = [("rev: abc =", "cba"), ("up sort: dcb =", "BCD"), ("count: a in aab =", "3")]


def _mean_nll(model: torch.nn.Module, tokenizer, condition: str, target: str) -> float:
    """-1/|t| sum log p(t_i | bos, condition, t_<i), written out token by token."""
    prefix = [tokenizer.bos_token_id] + tokenizer(condition, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + target_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    total = sum(float(logprobs[len(prefix) - 1 + i, token]) for i, token in enumerate(target_ids))
    return -total / len(target_ids)


def test_ifd_and_rifd_match_a_direct_perplexity_ratio(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    model = build_student(context.tokenizer, 0)
    model.eval()
    scores = student_scores(context, model, PAIRS)
    tokenizer = build_tokenizer()
    for (x, y), got in zip(PAIRS, scores, strict=True):
        ppl = lambda c, t: math.exp(_mean_nll(model, tokenizer, c, t))  # noqa: E731
        assert got.ifd == pytest.approx(ppl(x, y) / ppl("", y), rel=1e-4)
        assert got.rifd == pytest.approx(ppl(reverse_prompt(y), x) / ppl("", x), rel=1e-4)
    # Each distinct perplexity is computed once: a repeated pair gives the same scores.
    again = student_scores(context, model, [PAIRS[0], PAIRS[0]])
    assert again[0] == again[1] == scores[0]


def _s(ifd: float, rifd: float) -> Scores:
    return Scores(ifd=ifd, rifd=rifd)


@pytest.mark.parametrize(
    ("original", "instruction", "response", "both", "expected"),
    [
        # x* raises IFD -> keep x*; then y*' lowers r-IFD -> keep it: (x*, y*')
        (_s(0.5, 0.8), _s(0.6, 0.7), _s(0.1, 0.1), _s(0.9, 0.6), ("both", True)),
        # x* kept, y*' does not lower r-IFD (a tie rejects it): (x*, y*)
        (_s(0.5, 0.8), _s(0.6, 0.7), _s(0.1, 0.1), _s(0.9, 0.7), ("instruction", True)),
        # equal IFD: x* is not *higher*, so it is rejected; y0' lowers r-IFD: (x0, y0')
        (_s(0.5, 0.8), _s(0.5, 0.1), _s(0.4, 0.7), _s(0.1, 0.1), ("response", True)),
        # x* rejected and y0' rejected (tie): the original pair
        (_s(0.5, 0.8), _s(0.4, 0.1), _s(0.4, 0.8), _s(0.1, 0.1), ("original", True)),
        # the chosen version's score equal to 1 fails the ceiling (strict), either score
        (_s(0.5, 0.8), _s(0.6, 0.7), _s(0.1, 0.1), _s(1.0, 0.6), ("both", False)),
        (_s(0.5, 1.5), _s(0.4, 0.7), _s(0.9, 1.0 - 1e-12), _s(0.1, 0.1), ("response", True)),
        (_s(0.5, 1.5), _s(0.4, 0.7), _s(1.0, 0.5), _s(0.1, 0.1), ("response", False)),
        (_s(0.5, 1.2), _s(0.4, 0.7), _s(0.9, 1.0), _s(0.1, 0.1), ("response", False)),
        # only the chosen version's scores matter for the ceiling
        (_s(0.5, 0.8), _s(5.0, 9.0), _s(0.9, 0.5), _s(0.1, 0.1), ("both", True)),
        # NaN (an empty text's perplexity) compares false everywhere
        (_s(0.5, 0.8), _s(math.nan, 0.1), _s(0.4, math.nan), _s(0.1, 0.1), ("original", True)),
    ],
)
def test_select_version_follows_get_select_data(
    original: Scores, instruction: Scores, response: Scores, both: Scores, expected: tuple[str, bool]
) -> None:
    assert select_version(original, instruction, response, both) == expected


def test_select_version_ceiling_is_a_parameter() -> None:
    chosen = (_s(0.5, 0.8), _s(0.6, 0.7), _s(0.1, 0.1), _s(1.5, 0.6))
    assert select_version(*chosen) == ("both", False)
    assert select_version(*chosen, ceiling=2.0) == ("both", True)
    assert select_version(*chosen, ceiling=1.5) == ("both", False)


def _versions(n: int) -> dict[str, list[tuple[str, str]]]:
    return {name: [(f"{name} x{i}", f"{name} y{i}") for i in range(n)] for name in VERSIONS}


def test_select_pairs_writes_only_accepted_rewrites_and_counts_every_decision() -> None:
    # pair 0 -> both (kept), 1 -> instruction (not written), 2 -> response (kept),
    # 3 -> original (not written), 4 -> both over the ceiling
    rows = [
        (_s(0.5, 0.8), _s(0.6, 0.7), _s(0.1, 0.1), _s(0.3, 0.6)),
        (_s(0.5, 0.8), _s(0.6, 0.7), _s(0.1, 0.1), _s(0.3, 0.9)),
        (_s(0.5, 0.8), _s(0.5, 0.1), _s(0.7, 0.2), _s(0.1, 0.1)),
        (_s(0.5, 0.8), _s(0.4, 0.1), _s(0.4, 0.9), _s(0.1, 0.1)),
        (_s(0.5, 0.8), _s(0.6, 0.7), _s(0.1, 0.1), _s(1.3, 0.6)),
    ]
    scores = {name: [row[k] for row in rows] for k, name in enumerate(VERSIONS)}
    versions = _versions(len(rows))
    stats: dict[str, int] = {}
    selected = select_pairs(versions, scores, stats)
    assert selected == [("both x0", "both y0"), ("response x2", "response y2")]
    assert stats == {
        "selection: both (kept)": 1,
        "selection: instruction (not written)": 1,
        "selection: response (kept)": 1,
        "selection: original (not written)": 1,
        "selection: both (over ceiling)": 1,
        "selection: kept": 2,
    }
    # keep_rejected_responses writes the versions whose rewrite the student rejected too
    assert select_pairs(versions, scores, {}, keep_rejected_responses=True) == [
        ("both x0", "both y0"),
        ("instruction x1", "instruction y1"),
        ("response x2", "response y2"),
        ("original x3", "original y3"),
    ]
    # top_k keeps the highest IFD first: response (0.7) before both (0.3)
    assert select_pairs(versions, scores, {}, top_k=1) == [("response x2", "response y2")]
    assert select_pairs(versions, scores, {}, top_k=5) == [
        ("response x2", "response y2"),
        ("both x0", "both y0"),
    ]


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError, match="score_ceiling"):
        selective_reflection_recipe(score_ceiling=0)
    with pytest.raises(ValueError, match="top_k"):
        selective_reflection_recipe(top_k=0)
    with pytest.raises(ValueError, match="instruction_operation"):
        selective_reflection_recipe(instruction_operation="rewrite")
    with pytest.raises(ValueError, match="scorer_steps"):
        selective_reflection_recipe(scorer_steps=0)


def test_selective_reflection_end_to_end_with_an_exact_teacher(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    data = selective_reflection_recipe(num_instructions=6, scorer_steps=2).data.build(context)
    stats = context.stats
    decisions = {k: v for k, v in stats.items() if k.startswith("selection: ") and k != "selection: kept"}
    assert sum(decisions.values()) == 6
    # An exact teacher's fix repeats every (correct) response, so no rewrite is accepted (a tie
    # in r-IFD is not lower) and, as released, nothing is written.
    assert not any(k.startswith(("selection: both", "selection: response")) for k in decisions)
    assert data.examples == [] and stats["selection: kept"] == 0
    # With the rejected rewrites written and no ceiling, every pair comes back, all correct.
    context = make_context(tmp_path)
    recipe = selective_reflection_recipe(
        num_instructions=6, scorer_steps=2, keep_rejected_responses=True, score_ceiling=math.inf
    )
    data = recipe.data.build(context)
    assert len(data.examples) == 6 == context.stats["selection: kept"]
    assert context.stats["selected: responses correct"] == 1.0
