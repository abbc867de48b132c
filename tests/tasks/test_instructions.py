"""The instruction suite's splits: the OOD split is out of distribution and the others did not move."""

from __future__ import annotations

import hashlib

from reference_impls.tasks import instructions as suite


def _fingerprint(examples: list) -> str:
    return hashlib.sha256("|".join(f"{e.prompt}={e.response}" for e in examples).encode()).hexdigest()[:16]


def _last_turns(split: str, n: int) -> list:
    return [suite.last_turn_example(c) for c in suite.make_conversations(split, n)]


def test_adding_the_ood_splits_left_train_and_test_as_the_shipped_teacher_learned_them() -> None:
    # Digests of the streams before the OOD splits existed: the teacher's key is the suite
    # version, not this code, so a silent change here would go unnoticed without them.
    assert _fingerprint(suite.make_instructions("train", 500)) == "7b141979dfe379c1"
    assert _fingerprint(suite.make_instructions("test", 500)) == "6406cfdb999e07e2"
    assert _fingerprint(_last_turns("train", 300)) == "0344696a4740a750"
    assert _fingerprint(_last_turns("test", 300)) == "0ffd0d5f322d54b4"
    assert _fingerprint(suite.make_find_queries("train", 300)) == "4a01f7720a66004c"
    assert _fingerprint(suite.make_find_queries("test", 300)) == "95192eae1807e4bf"


def test_ood_inputs_are_longer_than_any_training_input_and_answers_are_exact() -> None:
    ood = suite.make_instructions("ood", 240)
    train = suite.make_instructions("train", 2000)
    for split in (ood, train):
        for example in split:  # every example parses back to itself: the answers are exact
            parsed = suite.parse_instruction(example.prompt)
            assert parsed is not None and parsed.answers == example.answers, example
    ops = [e for e in ood if e.task.split(" ")[0] in suite.OPS]
    longest_trained = max(len(e.input) for e in train if e.task.split(" ")[0] in suite.OPS)
    assert longest_trained == suite.WORD_LENGTH[1]
    assert ops and all(suite.OOD_WORD_LENGTH[0] <= len(e.input) <= suite.OOD_WORD_LENGTH[1] for e in ops)
    assert {e.prompt for e in ood}.isdisjoint(e.prompt for e in train)
    assert {suite.depth_of(e) for e in ood} == {1, 2, 3}  # balanced over depths like the test split
    assert {e.task for e in ood if suite.depth_of(e) == 1} == set(suite.KINDS)
    assert suite.make_instructions("ood", 24) == ood[:24]  # prefix-stable


def test_ood_conversations_and_queries_have_longer_inputs_than_training() -> None:
    trained_turns = {turn for c in suite.make_conversations("train", 500) for turn, _ in c.turns}
    for conversation in suite.make_conversations("ood", 60):
        for turn, response in conversation.turns:
            example = suite.parse_instruction(turn)
            assert example is not None and example.response == response and turn not in trained_turns
            if example.task.split(" ")[0] in suite.OPS:
                assert len(example.input) >= suite.OOD_WORD_LENGTH[0]
    longest_trained = max(len(e.input) for e in suite.make_find_queries("train", 500))
    queries = suite.make_find_queries("ood", 120)
    assert all(len(q.input) > longest_trained for q in queries)
    assert {q.response == suite.NO_ENTITY for q in queries} == {True, False}  # negatives and positives
    assert all(q.response == suite.find_example(q.task.split(" ")[1], q.input).response for q in queries)
