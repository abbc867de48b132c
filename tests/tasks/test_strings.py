"""The synthetic task suite: determinism, disjoint splits, exact scoring, renderings, JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reference_impls.tasks.strings import (
    SPLITS,
    SUITE_VERSION,
    TASK_NAMES,
    classification_view,
    extract_answer,
    few_shot_prompt,
    is_correct,
    load_jsonl,
    make_split,
    save_jsonl,
    with_rationale,
)


def test_version_and_tasks() -> None:
    assert SUITE_VERSION == "v1"
    assert {"copy", "rev", "sort", "up", "add", "count", "vowel"} <= set(TASK_NAMES)


@pytest.mark.parametrize("split", SPLITS)
def test_splits_are_deterministic_and_prefix_stable(split: str) -> None:
    assert make_split(split, 50, seed=3) == make_split(split, 50, seed=3)
    assert make_split(split, 20, seed=3) == make_split(split, 50, seed=3)[:20]
    assert make_split(split, 50, seed=3) != make_split(split, 50, seed=4)


def test_train_and_test_are_disjoint() -> None:
    train = {e.prompt for e in make_split("train", 3000)}
    test = {e.prompt for e in make_split("test", 600)}
    ood = {e.prompt for e in make_split("ood", 600)}
    assert not train & test
    assert not train & ood


def test_every_example_is_consistent() -> None:
    for split in SPLITS:
        for example in make_split(split, 140):
            assert example.response in example.answers
            assert is_correct(example.response, example)
            assert TASK_NAMES[example.label] == example.task
            assert len(example.prompt) + len(example.response) <= 40


def test_reference_answers_are_right() -> None:
    by_task = {e.task: e for e in make_split("train", 7)}
    assert by_task["rev"].response == by_task["rev"].input[::-1]
    assert by_task["sort"].response == "".join(sorted(by_task["sort"].input))
    assert by_task["up"].response == by_task["up"].input.upper()
    a, b = by_task["add"].input.split("+")
    assert by_task["add"].response == str(int(a) + int(b))
    letter, word = by_task["count"].input.split(" in ")
    assert by_task["count"].response == str(word.count(letter))


def test_multi_answer_task_accepts_every_vowel() -> None:
    examples = [e for e in make_split("train", 700) if e.task == "vowel"]
    assert any(len(e.answers) > 1 for e in examples)
    for e in examples:
        assert set(e.answers) == set(e.input) & set("aeiou")
        assert all(is_correct(answer, e) for answer in e.answers)
        assert not is_correct("b", e)


def test_exact_scoring_strips_whitespace_only() -> None:
    example = make_split("test", 2)[1]  # a rev example
    assert is_correct(f" {example.response}\n", example)
    assert not is_correct(example.response.upper() + "x", example)


def test_ood_is_longer() -> None:
    in_dist = make_split("test", 140)
    ood = make_split("ood", 140)
    assert max(len(e.input) for e in in_dist if e.task == "rev") < min(
        len(e.input) for e in ood if e.task == "rev"
    )
    assert all(len(e.response) >= 3 for e in ood if e.task == "add")


def test_perturbed_keeps_answers_but_changes_prompts() -> None:
    test, perturbed = make_split("test", 70), make_split("perturbed", 70)
    for clean, noisy in zip(test, perturbed, strict=True):
        assert noisy.answers == clean.answers and noisy.response == clean.response
        assert noisy.prompt != clean.prompt
        assert " ".join(noisy.prompt.split()).replace(" :", ":") == clean.prompt


def test_few_shot_prompt_hides_the_task_name() -> None:
    train, query = make_split("train", 70), make_split("test", 2)[1]
    prompt = few_shot_prompt(train, query, k=3)
    lines = prompt.split("\n")
    assert len(lines) == 4
    assert lines[-1] == f"{query.input} ="
    assert query.task not in prompt.replace(query.input, "")
    demos = [e for e in train if e.task == query.task][:3]
    assert lines[0] == f"{demos[0].input} = {demos[0].response}"
    with pytest.raises(ValueError, match="demonstrations"):
        few_shot_prompt(train[:7], query, k=3)


def test_rationale_rendering_and_answer_extraction() -> None:
    add = next(e for e in make_split("train", 14) if e.task == "add")
    cot = with_rationale(add)
    assert cot.response.startswith(add.rationale)
    assert extract_answer(cot.response) == add.response
    copy = make_split("train", 1)[0]
    assert copy.rationale == "" and with_rationale(copy) == copy


def test_addition_rationale_columns() -> None:
    add = next(e for e in make_split("train", 14) if e.task == "add")
    columns = add.rationale.split(";")
    carry = 0
    for column in columns:
        lhs, total = column.split("=")
        x, y, c = (int(v) for v in lhs.split("+"))
        assert c == carry and x + y + c == int(total)
        carry = int(total) // 10


def test_classification_view() -> None:
    examples = make_split("test", 14)
    view = classification_view(examples)
    assert [label for _, label in view] == [e.label for e in examples]
    assert [text for text, _ in view] == [f"{e.input} = {e.response}" for e in examples]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    examples = make_split("test", 14)
    path = tmp_path / "data.jsonl"
    save_jsonl(examples, path)
    loaded = load_jsonl(path)
    assert [(e.prompt, e.response, e.answers) for e in loaded] == [
        (e.prompt, e.response, e.answers) for e in examples
    ]


def test_jsonl_answers_are_optional(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": "d", "answers": ["d", "e"]}\n'
    )
    first, second = load_jsonl(path)
    assert first.answers == ("b",) and second.answers == ("d", "e")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"prompt": "a"}',
            "missing key 'response' — each line must be a JSON object with 'prompt' and 'response'",
        ),
        ('{"response": "a"}', "missing key 'prompt'"),
        ("not json", "invalid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"prompt": 1, "response": "a"}', "'prompt' must be a string"),
        ('{"prompt": "a", "response": "b", "answers": "b"}', "'answers' must be a non-empty list"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "response": "ok"}) + "\n" + line + "\n")
    with pytest.raises(ValueError) as error:
        load_jsonl(path)
    assert str(error.value).startswith(f"{path}:2: ")
    assert message in str(error.value)


def test_empty_jsonl_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="no examples"):
        load_jsonl(path)
