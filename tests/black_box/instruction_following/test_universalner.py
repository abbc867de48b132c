"""UniversalNER's data pipeline: open annotation → typed queries, negative sampling, bad output."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from reference_impls.black_box.instruction_following.universalner import (
    negative_types,
    sample_passages,
    universalner_recipe,
)
from reference_impls.core.sft import TrainingExample
from reference_impls.run import RunConfig, run_recipe
from reference_impls.tasks import instructions as suite
from tests.support.fakes import OracleTeacher, make_context

PASSAGES = sample_passages(8, seed=0)  # what the pipeline annotates at run seed 0


def queries(example: TrainingExample) -> dict[str, str]:
    """``{find prompt: answer}`` of a training conversation or pair."""
    texts = [text.rstrip(suite.TURN_SEPARATOR) for text, _ in example.segments]
    return dict(zip(texts[::2], texts[1::2], strict=True))


def by_passage(examples: list[TrainingExample]) -> dict[str, dict[str, str]]:
    """Training queries grouped by passage: ``{passage: {entity type: answer}}``."""
    grouped: dict[str, dict[str, str]] = {}
    for example in examples:
        for prompt, answer in queries(example).items():
            head, _, passage = prompt.partition(": ")
            grouped.setdefault(passage.rstrip(" ="), {})[head[len("find ") :]] = answer
    return grouped


def test_passages_come_from_the_training_bucket_only() -> None:
    passages = sample_passages(200, seed=3)
    assert len(set(passages)) == 200
    assert not any(suite.in_test_bucket(p) for p in passages)
    assert sample_passages(5, seed=3) == passages[:5]


def test_absent_types_become_none_queries_and_present_ones_keep_the_teachers_entities(
    tmp_path: Path,
) -> None:
    wrong = PASSAGES[0]

    def mistakes(prompt: str, text: str) -> str:
        # The teacher invents a digit and misses everything else in the first passage.
        return "digit 7" if prompt == suite.annotate_prompt(wrong) else text

    context = make_context(tmp_path, OracleTeacher(mistakes=mistakes))
    data = universalner_recipe(num_passages=8).data.build(context)
    grouped = by_passage(data.examples)
    assert set(grouped) == set(PASSAGES)
    for passage, answers in grouped.items():
        truth = {} if passage == wrong else suite.entities(passage)
        assert set(answers) == set(suite.ENTITY_TYPES)  # every type asked: 3 negatives allowed
        for entity_type, answer in answers.items():
            expected = " ".join(truth.get(entity_type, [])) or suite.NO_ENTITY
            if passage == wrong:
                expected = "7" if entity_type == "digit" else suite.NO_ENTITY
            assert answer == expected, (passage, entity_type)
    stats = context.stats
    assert stats["positive queries"] + stats["negative queries"] == 3 * len(PASSAGES)
    assert stats["positive answers correct"] == stats["positive queries"] - 1  # the invented "7"
    assert stats["teacher annotations exact"] == pytest.approx(7 / 8)
    # One conversation per passage, loss on the answers only.
    assert len(data.examples) == len(PASSAGES)
    for example in data.examples:
        assert [supervised for _, supervised in example.segments] == [False, True] * 3


def test_malformed_empty_and_truncated_annotations_are_dropped_and_counted(tmp_path: Path) -> None:
    bad = {
        suite.annotate_prompt(PASSAGES[0]): "digit 3; digit 4",  # repeated type
        suite.annotate_prompt(PASSAGES[1]): "colour red",  # unknown type
        suite.annotate_prompt(PASSAGES[2]): "",
        suite.annotate_prompt(PASSAGES[3]): "vowel ae",  # multi-character entity
    }
    truncated = suite.annotate_prompt(PASSAGES[4])
    teacher = OracleTeacher(
        mistakes=lambda prompt, text: bad.get(prompt, text),
        finish_reason=lambda prompt, text: "length" if prompt == truncated else "stop",
    )
    context = make_context(tmp_path, teacher)
    data = universalner_recipe(num_passages=8).data.build(context)
    assert set(by_passage(data.examples)) == set(PASSAGES[5:])
    assert context.stats["annotations dropped (malformed)"] == 3
    assert context.stats["annotations dropped (empty)"] == 1
    assert context.stats["annotations dropped (truncated)"] == 1
    assert context.stats["annotations kept"] == 3


def test_without_negative_sampling_there_are_no_none_queries(tmp_path: Path) -> None:
    empty = suite.annotate_prompt(PASSAGES[0])
    teacher = OracleTeacher(mistakes=lambda prompt, text: suite.NO_ENTITY if prompt == empty else text)
    context = make_context(tmp_path, teacher)
    recipe = universalner_recipe(num_passages=8, negative_sampling=False, conversation=False)
    data = recipe.data.build(context)
    answers = [a for example in data.examples for a in queries(example).values()]
    assert suite.NO_ENTITY not in answers
    assert "negative queries" not in context.stats
    assert context.stats["passages without queries"] == 1  # its annotation named no type
    expected = sum(len(suite.entities(p)) for p in PASSAGES[1:])
    assert len(data.examples) == len(answers) == expected  # single pairs, one per positive query


def test_negative_types_follow_type_frequency_and_respect_the_cap() -> None:
    rng = random.Random(0)
    frequencies = Counter({"digit": 500, "vowel": 0, "upper": 0})
    draws = Counter(negative_types({}, frequencies, 1, rng)[0] for _ in range(300))
    assert draws["digit"] > 250  # weight 501 against 1 + 1
    assert negative_types({"vowel": ["a"]}, frequencies, 3, rng) in (["digit", "upper"], ["upper", "digit"])
    assert negative_types({t: ["x"] for t in suite.ENTITY_TYPES}, frequencies, 3, rng) == []


def test_bad_hyperparameters_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="num_passages"):
        universalner_recipe(num_passages=0)
    with pytest.raises(ValueError, match="negatives_per_passage"):
        universalner_recipe(negatives_per_passage=4)


def test_end_to_end_is_scored_on_typed_queries(tmp_path: Path) -> None:
    config = RunConfig(
        device="cpu", steps=2, eval_size=8, cache=str(tmp_path / "cache.jsonl"), progress=False
    )
    result = run_recipe(universalner_recipe(num_passages=10), config, teacher=OracleTeacher())
    assert result.metrics["teacher"]["exact_match"] == 1.0
    assert {"exact_match (negative queries)", "exact_match (positive queries)"} <= set(
        result.metrics["distilled"]
    )
    assert result.config["hyperparameters"]["negative_sampling"] is True
    assert len(result.data) == 10
