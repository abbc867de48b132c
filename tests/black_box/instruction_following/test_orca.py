"""Orca: system messages paired with queries and kept in the training prompt, the explanation
format check (malformed explanations dropped), bad teacher output, and a short end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impls.black_box.instruction_following.orca import (
    explanation_data,
    explanation_problem,
    orca_recipe,
)
from reference_impls.run import RunConfig, run_recipe
from reference_impls.tasks import instructions as suite
from reference_impls.tasks.strings import Example, extract_answer
from tests.support.fakes import OracleTeacher, make_context

TWO_STEPS = suite.parse_instruction("rev up: abc =")  # rationale "cba;CBA", answer "CBA"
ONE_STEP = suite.parse_instruction("rev: abc =")  # no rationale
ADD = suite.parse_instruction("add: 57+8 =")  # column-wise rationale


@pytest.mark.parametrize(
    ("text", "query", "system", "problem"),
    [
        ("cba;CBA => CBA", TWO_STEPS, "explain", None),
        ("cba;CBA => CBX", TWO_STEPS, "explain", None),  # wrong but well-formed: kept
        ("7+8+0=15;5+0+1=6 => 65", ADD, "explain", None),
        ("cba", ONE_STEP, "explain", None),  # one step: the answer alone is the explanation
        ("cba => cba", ONE_STEP, "explain", None),
        ("CBA", TWO_STEPS, "explain", "missing explanation"),
        ("65", ADD, "explain", "missing explanation"),
        ("cba;CBA =>", TWO_STEPS, "explain", "empty explanation or answer"),
        ("=> CBA", TWO_STEPS, "explain", "empty explanation or answer"),
        ("cba => CBA => CBA", TWO_STEPS, "explain", "repeated '=>'"),
        ("cba => CBA", TWO_STEPS, "explain", "one step per operation expected"),
        ("cba;CBA;ABC => ABC", TWO_STEPS, "explain", "one step per operation expected"),
        ("cba; => CBA", TWO_STEPS, "explain", "one step per operation expected"),
        ("x;y;z => CBA", TWO_STEPS, "explain", "one step per operation expected"),
        ("cbb;XYZ => QQQ", TWO_STEPS, "explain", None),  # wrong steps, right form: kept
        ("CBA", TWO_STEPS, "brief", None),
        ("cba;CBA => CBA", TWO_STEPS, "brief", "explanation not asked for"),
    ],
)
def test_explanation_format(text: str, query: Example, system: str, problem: str | None) -> None:
    assert explanation_problem(text, query, system) == problem


def test_read_answer_takes_what_follows_the_last_mark() -> None:
    assert extract_answer("cba;CBA => CBA") == "CBA"
    assert extract_answer("cba") == "cba"


@pytest.mark.parametrize("system", ["explain", "brief"])
def test_system_message_is_paired_with_each_query_and_kept_in_the_training_prompt(
    tmp_path: Path, system: str
) -> None:
    teacher = OracleTeacher()
    context = make_context(tmp_path, teacher)
    data = orca_recipe(num_queries=30, system=system).data.build(context)
    queries = suite.make_instructions("train", 30)
    prompts = [suite.conversation_prompt([], q.prompt, system=system) for q in queries]
    assert teacher.prompts == prompts  # one request per query, under its system message
    assert [e.segments[0] for e in data.examples] == [(p, False) for p in prompts]
    for example, query in zip(data.examples, queries, strict=True):
        assert example.segments[0][0].startswith(system + suite.TURN_SEPARATOR)
        exact = suite.parse_instruction(query.prompt)  # what the oracle answers (vowel: the first)
        expected = suite.explained(exact) if system == "explain" else exact.response
        assert example.segments[1] == (expected, True)
    assert context.stats["orca: teacher answers correct"] == 1.0
    assert context.stats[f"orca: kept under '{system}'"] == 30


def test_mixed_draws_one_message_per_query_and_the_response_follows_it(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    data = orca_recipe(num_queries=40, system="mixed").data.build(context)
    systems = [e.segments[0][0].split(suite.TURN_SEPARATOR)[0] for e in data.examples]
    assert set(systems) == {"explain", "brief"}
    assert context.stats["orca: kept under 'explain'"] + context.stats["orca: kept under 'brief'"] == 40
    for system, example in zip(systems, data.examples, strict=True):
        response = example.segments[1][0]
        if system == "brief":
            assert suite.ANSWER_MARK not in response


def test_malformed_and_unusable_explanations_are_dropped_wrong_ones_kept(tmp_path: Path) -> None:
    queries = [q for q in suite.make_instructions("train", 60) if q.rationale][:6]
    bad = {
        queries[0].prompt: lambda text: text.split(suite.ANSWER_MARK)[-1],  # answer without the steps
        queries[1].prompt: lambda text: text + suite.ANSWER_MARK + "x",  # two answer marks
        queries[2].prompt: lambda text: "",  # empty
        queries[3].prompt: lambda text: "?!;",  # no content
        queries[4].prompt: lambda text: text + "z",  # wrong final answer, well-formed
    }

    def mistakes(prompt: str, text: str) -> str:
        return bad.get(prompt.split(suite.TURN_SEPARATOR)[-1], lambda t: t)(text)

    truncated = suite.conversation_prompt([], queries[5].prompt, system="explain")
    teacher = OracleTeacher(
        mistakes=mistakes, finish_reason=lambda p, t: "length" if p == truncated else "stop"
    )
    context = make_context(tmp_path, teacher)
    examples = explanation_data(context, queries, ["explain"] * 6, tag="o")
    stats = context.stats
    assert stats["o: dropped (missing explanation)"] == 1
    assert stats["o: dropped (repeated '=>')"] == 1
    assert stats["o: dropped (empty)"] == 1
    assert stats["o: dropped (no content)"] == 1
    assert stats["o: dropped (truncated)"] == 1
    assert len(examples) == 1 and stats["o: kept under 'explain'"] == 1
    assert examples[0].segments[1] == (suite.explained(queries[4]) + "z", True)
    assert stats["o: teacher answers correct"] == 0.0  # reported, never used to filter


def test_an_explanation_under_brief_is_dropped(tmp_path: Path) -> None:
    queries = [q for q in suite.make_instructions("train", 30) if q.rationale][:3]
    teacher = OracleTeacher(mistakes=lambda p, t: suite.explained(suite.parse_instruction(p.split("\n")[-1])))
    context = make_context(tmp_path, teacher)
    assert explanation_data(context, queries, ["brief"] * 3, tag="o") == []
    assert context.stats["o: dropped (explanation not asked for)"] == 3


def test_end_to_end_is_scored_on_explained_answers(tmp_path: Path) -> None:
    config = RunConfig(
        device="cpu", steps=2, eval_size=9, cache=str(tmp_path / "c.jsonl"), progress=False
    )
    result = run_recipe(orca_recipe(num_queries=12), config, teacher=OracleTeacher())
    assert result.config["evaluation"]["name"] == "explained"
    assert result.metrics["teacher"]["exact_match"] == 1.0  # the oracle's "steps => answer", read after "=>"
    assert result.config["hyperparameters"] == {"num_queries": 12, "system": "explain"}
    assert result.config["pipeline"]["training_examples"] == 12


def test_each_student_is_asked_in_the_format_it_was_trained_on() -> None:
    assert orca_recipe(system="explain").evaluation == "explained"
    assert orca_recipe(system="mixed").evaluation == "explained"
    assert orca_recipe(system="brief").evaluation == "brief"


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError, match="num_queries"):
        orca_recipe(num_queries=0)
    with pytest.raises(ValueError, match="system must be one of explain, brief, mixed"):
        orca_recipe(system="eli5")
