"""Vicuna: the assistant-only loss mask, turn-by-turn teacher calls with the teacher's own history,
cleaning (conversations with a bad assistant turn dropped), splitting, and a short end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impls.black_box.instruction_following.vicuna import (
    assistant_turn_problem,
    collect_conversations,
    split_conversation,
    vicuna_recipe,
)
from reference_impls.core.sft import TrainingExample, encode_example
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.run import RunConfig, run_recipe
from reference_impls.tasks import instructions as suite
from reference_impls.teachers.text import Completion
from tests.support.fakes import OracleTeacher, make_context

TURNS = [("up: ab =", "AB"), ("rev: abc =", "cba")]


def ids_of(text: str) -> list[int]:
    return list(build_tokenizer()(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------------------- loss mask


def test_loss_mask_supervises_assistant_turns_separators_and_final_eos_only() -> None:
    tokenizer = build_tokenizer()
    ids, labels = encode_example(tokenizer, TrainingExample.conversation(TURNS, loss_on="assistant"))
    bos, eos, masked = tokenizer.bos_token_id, tokenizer.eos_token_id, [-100]
    assert ids == [bos, *ids_of("up: ab ="), *ids_of("AB\n"), *ids_of("rev: abc ="), *ids_of("cba"), eos]
    expected = masked + masked * 8 + ids_of("AB\n") + masked * 10 + ids_of("cba") + [eos]
    assert labels == expected
    # What the loss sees, decoded: the assistant turns, the separator that ends the first, EOS.
    supervised = [t for t in labels if t != -100]
    assert tokenizer.decode(supervised) == "AB\ncba<eos>"


def test_loss_on_all_supervises_every_token_but_bos() -> None:
    tokenizer = build_tokenizer()
    ids, labels = encode_example(tokenizer, TrainingExample.conversation(TURNS, loss_on="all"))
    assert labels == [-100, *ids[1:]]


def test_pipeline_examples_carry_the_requested_mask(tmp_path: Path) -> None:
    for loss_on in ("assistant", "all"):
        context = make_context(tmp_path / loss_on)
        data = vicuna_recipe(num_conversations=6, loss_on=loss_on).data.build(context)
        assert len(data.examples) == 6
        for example in data.examples:
            users = [text for text, supervised in example.segments[::2]]
            assert all(suite.parse_instruction(u) is not None for u in users)
            assert [s for _, s in example.segments] == [loss_on == "all", True] * len(users)


# ------------------------------------------------------------------------- turn-by-turn calls


def test_teacher_is_asked_turn_by_turn_with_its_own_earlier_answers(tmp_path: Path) -> None:
    # The teacher gets every first turn wrong (an "x" appended): the second turn must be asked
    # with that wrong answer in its history, not the reference answer.
    first_turns = {c.turns[0][0] for c in suite.make_conversations("train", 5)}
    teacher = OracleTeacher(mistakes=lambda prompt, text: text + "x" if prompt in first_turns else text)
    context = make_context(tmp_path, teacher)
    users = [[u for u, _ in c.turns] for c in suite.make_conversations("train", 5)]
    conversations = collect_conversations(context, users, tag="v")
    assert teacher.calls == sum(len(u) for u in users)  # one call per turn, nothing more
    for user, turns in zip(users, conversations, strict=True):
        assert turns is not None and [u for u, _ in turns] == user
        reference = suite.parse_instruction(user[0]).response
        assert turns[0][1] == reference + "x"  # the teacher's own (wrong) answer is kept
        history = [turns[0]]
        assert suite.conversation_prompt(history, user[1]) in teacher.prompts
        assert suite.conversation_prompt([(user[0], reference)], user[1]) not in teacher.prompts
        if len(user) == 3:
            assert suite.conversation_prompt(turns[:2], user[2]) in teacher.prompts
    # Turn t of all conversations is one batch, in order: all first turns come before any second.
    assert teacher.prompts[: len(users)] == [u[0] for u in users]


def test_conversation_with_a_bad_assistant_turn_is_dropped_and_not_asked_further(tmp_path: Path) -> None:
    users = [
        ["rev: abc =", "up: ab ="],  # second turn empty
        ["sort: cab =", "dedup: aab ="],  # first turn cut off at the length limit
        ["up: xy =", "rev: xy ="],  # first turn runs into a user turn (stop string ignored)
        ["copy: abc =", "up: cd =", "rev: ef ="],  # fine
    ]
    bad_text = {"up: ab =": "", "up: xy =": "XY\nrev: xy ="}

    def mistakes(prompt: str, text: str) -> str:
        return bad_text.get(prompt.split(suite.TURN_SEPARATOR)[-1], text)

    teacher = OracleTeacher(
        mistakes=mistakes,
        finish_reason=lambda prompt, text: "length" if prompt == "sort: cab =" else "stop",
    )
    context = make_context(tmp_path, teacher)
    conversations = collect_conversations(context, users, tag="v")
    assert conversations[:3] == [None, None, None]
    assert conversations[3] == [("copy: abc =", "abc"), ("up: cd =", "CD"), ("rev: ef =", "fe")]
    # Conversations 2 and 3 died at turn 1: their second turns were never asked.
    assert teacher.calls == 4 + 2 + 1  # turn 1: all four; turn 2: conversations 1 and 4; turn 3: 4
    assert not any(p.endswith("dedup: aab =") or p.endswith("rev: xy =") for p in teacher.prompts)
    stats = context.stats
    assert stats["v: conversations dropped (empty assistant turn)"] == 1
    assert stats["v: conversations dropped (truncated assistant turn)"] == 1
    assert stats["v: conversations dropped (runs into the next turn assistant turn)"] == 1


def test_assistant_turn_problems() -> None:
    assert assistant_turn_problem(Completion("cba", "stop")) is None
    assert assistant_turn_problem(Completion(" cba ", "stop")) is None
    assert assistant_turn_problem(Completion("", "stop")) == "empty"
    assert assistant_turn_problem(Completion("cb", "length")) == "truncated"
    assert assistant_turn_problem(Completion("cba\nup: x =", "stop")) == "runs into the next turn"


def test_pipeline_counts_drops_and_trains_only_on_kept_conversations(tmp_path: Path) -> None:
    users = suite.make_conversations("train", 20)
    poisoned = {c.turns[-1][0] for c in users[:4]}  # the last turn of 4 conversations comes back empty
    teacher = OracleTeacher(mistakes=lambda p, t: "" if p.split(suite.TURN_SEPARATOR)[-1] in poisoned else t)
    context = make_context(tmp_path, teacher)
    data = vicuna_recipe(num_conversations=20).data.build(context)
    assert context.stats["vicuna: conversations dropped (empty assistant turn)"] == 4
    assert context.stats["vicuna: conversations kept"] == len(data.examples) == 16
    assert context.stats["vicuna: teacher answers correct"] == 1.0
    texts = {e.text for e in data.examples}
    for conversation in users[4:]:
        assert suite.TURN_SEPARATOR.join(u + a for u, a in conversation.turns) in texts


# ---------------------------------------------------------------------------------- splitting


def test_long_conversations_are_split_into_whole_turn_pieces() -> None:
    tokenizer = build_tokenizer()
    turns = [("up: ab =", "AB"), ("rev: abc =", "cba"), ("sort: dcba =", "abcd")]
    # Token lengths: bos + 8 + 2 + eos = 12 for turn 1 alone; turns 1-2: 12 + 1 (separator) + 13 = 26.
    pieces, too_long = split_conversation(turns, tokenizer, 26)
    assert too_long == 0
    assert [p.text for p in pieces] == ["up: ab =AB\nrev: abc =cba", "sort: dcba =abcd"]
    for piece in pieces:
        assert len(encode_example(tokenizer, piece)[0]) <= 26
        assert piece.segments[0][1] is False  # every piece starts with a (masked) user turn
    whole, _ = split_conversation(turns, tokenizer, 256)
    assert [p.text for p in whole] == [suite.TURN_SEPARATOR.join(u + a for u, a in turns)]
    # Each turn alone fits in 17 tokens except the third (bos + 12 + 4 + eos = 18): it is dropped.
    pieces, too_long = split_conversation(turns, tokenizer, 17)
    assert too_long == 1 and [p.text for p in pieces] == ["up: ab =AB", "rev: abc =cba"]


def test_pipeline_splits_with_max_length(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    data = vicuna_recipe(num_conversations=10, max_length=30).data.build(context)
    assert context.stats["vicuna: conversations split"] > 0
    assert len(data.examples) > 10
    assert all(len(encode_example(context.tokenizer, e)[0]) <= 30 for e in data.examples)


# ------------------------------------------------------------------------------- end to end


def test_end_to_end_is_scored_on_conversations(tmp_path: Path) -> None:
    config = RunConfig(
        device="cpu", steps=3, eval_size=12, cache=str(tmp_path / "c.jsonl"), progress=False
    )
    result = run_recipe(vicuna_recipe(num_conversations=12), config, teacher=OracleTeacher())
    assert result.config["evaluation"]["name"] == "conversations"
    assert result.metrics["teacher"]["exact_match"] == 1.0
    assert {"exact_match (2 turns)", "exact_match (3 turns)"} <= set(result.metrics["distilled"])
    assert result.config["hyperparameters"]["loss_on"] == "assistant"
    assert result.config["pipeline"]["training_examples"] == 12


def test_bad_hyperparameters_are_refused() -> None:
    for kwargs, name in [
        ({"num_conversations": 0}, "num_conversations"),
        ({"min_turns": 3, "max_turns": 2}, "min_turns"),
        ({"max_turns": 7}, "max_turns"),
        ({"max_length": 4}, "max_length"),
        ({"loss_on": "user"}, "loss_on"),
    ]:
        with pytest.raises(ValueError, match=name):
            vicuna_recipe(**kwargs)
