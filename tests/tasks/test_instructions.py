"""The instruction suite's splits: the OOD split is out of distribution and the others did not move."""

from __future__ import annotations

import hashlib

from reference_impls.tasks import instructions as suite


def _fingerprint(split: str, n: int = 500) -> str:
    examples = suite.make_instructions(split, n)
    return hashlib.sha256("|".join(f"{e.prompt}={e.response}" for e in examples).encode()).hexdigest()[:16]


def test_adding_the_ood_split_left_train_and_test_as_the_shipped_teacher_learned_them() -> None:
    # Digests of the streams before the OOD split existed: the teacher's key is the suite
    # version, not this code, so a silent change here would go unnoticed without them.
    assert _fingerprint("train") == "7b141979dfe379c1"
    assert _fingerprint("test") == "6406cfdb999e07e2"


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
