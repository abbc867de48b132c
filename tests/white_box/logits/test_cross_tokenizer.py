"""Cross-tokenizer distillation, the shared part: the pair tokenizer and the alignments.

The methods' own losses are tested in their mirrored files: ULD in test_uld.py, DSKD (with CMA)
in test_dskd.py."""

from __future__ import annotations

import pytest
import torch

from reference_impls.core.tokenizer import (
    CHARACTERS,
    SPECIAL_TOKENS,
    TOKENIZERS,
    build_pair_tokenizer,
    build_tokenizer,
    encode_pair,
)
from reference_impls.tasks.strings import make_split
from reference_impls.white_box.logits._cross_tokenizer import (
    align_by_characters,
    align_response_starts,
    common_segments,
    token_char_spans,
)

IGNORE = -100


def _shifted(tokenizer, prompt: str, response: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids[:-1], labels[1:]) of one example, as a batch of one."""
    ids, labels = encode_pair(tokenizer, prompt, response)
    return torch.tensor([ids[:-1]]), torch.tensor([labels[1:]])


# --- the pair tokenizer --------------------------------------------------------------------------


def test_pair_tokenizer_is_registered_deterministic_and_extends_the_characters() -> None:
    char, pair = build_tokenizer(), TOKENIZERS["pair"]()
    assert set(TOKENIZERS) >= {"char", "pair"}
    assert len(char) == len(SPECIAL_TOKENS) + len(CHARACTERS)  # the teacher tokenizer is unchanged
    assert pair.get_vocab() == build_pair_tokenizer().get_vocab()  # deterministic
    assert len(pair) > len(char)
    # Same ids for the characters and special tokens; merges come after them.
    char_vocab = char.get_vocab()
    assert all(pair.get_vocab()[token] == index for token, index in char_vocab.items())


def test_pair_tokenizer_splits_the_suite_differently_and_round_trips() -> None:
    char, pair = build_tokenizer(), build_pair_tokenizer()
    shorter = 0
    for example in make_split("test", 30):
        text = example.prompt + example.response
        pair_ids = pair(text, add_special_tokens=False)["input_ids"]
        assert pair.decode(pair_ids) == text
        shorter += len(pair_ids) < len(char(text, add_special_tokens=False)["input_ids"])
    assert shorter == 30
    assert pair.convert_ids_to_tokens(pair("copy", add_special_tokens=False)["input_ids"]) == ["co", "py"]


def test_pair_tokenizer_follows_merge_priority_and_rejects_bad_merges() -> None:
    tokenizer = build_pair_tokenizer(["bc", "ab"])
    assert tokenizer.convert_ids_to_tokens(tokenizer("abc", add_special_tokens=False)["input_ids"]) == [
        "a",
        "bc",
    ]
    with pytest.raises(ValueError, match="two characters"):
        build_pair_tokenizer(["abc"])
    with pytest.raises(ValueError, match="repeat"):
        build_pair_tokenizer(["ab", "ab"])


# --- alignment -----------------------------------------------------------------------------------


def test_response_alignment_by_hand_on_char_teacher_and_pair_student() -> None:
    teacher_tok, student_tok = build_tokenizer(), build_pair_tokenizer(["cb", "ev", " ="])
    # teacher: <bos> r e v : ␠ a b c ␠ = | c b a <eos>  -> shifted labels valid at 10..13
    # student: <bos> r ev : ␠ a b c ␠=  | cb a <eos>     -> shifted labels valid at 8..10
    _, teacher_labels = _shifted(teacher_tok, "rev: abc =", "cba")
    _, student_labels = _shifted(student_tok, "rev: abc =", "cba")
    assert (teacher_labels[0] != IGNORE).nonzero().flatten().tolist() == [10, 11, 12, 13]
    assert (student_labels[0] != IGNORE).nonzero().flatten().tolist() == [8, 9, 10]
    assert student_tok.convert_ids_to_tokens(student_labels[0, 8:].tolist()) == ["cb", "a", "<eos>"]

    alignment = align_response_starts(student_labels, teacher_labels)
    # Left-aligned, cut to the shorter (3): student "cb" meets teacher "c" (different splits).
    assert alignment.student_positions.tolist() == [[8, 9, 10]]
    assert alignment.teacher_positions.tolist() == [[10, 11, 12]]
    assert alignment.mask.tolist() == [[True, True, True]]

    skipped = align_response_starts(
        student_labels, teacher_labels, skip_student_eos=True, skip_teacher_eos=True
    )
    assert skipped.student_positions.tolist() == [[8, 9]] and skipped.teacher_positions.tolist() == [[10, 11]]


def test_response_alignment_empty_response_eos_at_step_one_and_mixed_batch() -> None:
    teacher_tok, student_tok = build_tokenizer(), build_pair_tokenizer()
    _, t_empty = _shifted(teacher_tok, "up: ab =", "")
    _, s_empty = _shifted(student_tok, "up: ab =", "")
    # EOS is the first (and only) response label: one pair, the EOS positions.
    one = align_response_starts(s_empty, t_empty)
    assert one.student_positions.tolist() == [[s_empty.shape[1] - 1]]
    assert one.teacher_positions.tolist() == [[t_empty.shape[1] - 1]]
    assert align_response_starts(s_empty, t_empty, skip_student_eos=True).mask.shape == (1, 0)

    student = torch.tensor([[IGNORE, 5, 6, IGNORE], [IGNORE] * 4])
    teacher = torch.tensor([[IGNORE, IGNORE, 1, 2, 3], [IGNORE, 4, 4, 4, 4]])
    mixed = align_response_starts(student, teacher)
    assert mixed.mask.tolist() == [[True, True], [False, False]]
    assert mixed.student_positions.tolist() == [[1, 2], [0, 0]]
    assert mixed.teacher_positions.tolist() == [[2, 3], [0, 0]]
    with pytest.raises(ValueError, match="same example"):
        align_response_starts(student, teacher[:1])


def test_character_alignment_of_differently_split_multi_character_tokens() -> None:
    left, right = build_pair_tokenizer(["ab"]), build_pair_tokenizer(["bc"])
    left_spans, right_spans = token_char_spans(left, "abcd"), token_char_spans(right, "abcd")
    assert left_spans == [(0, 2), (2, 3), (3, 4)]  # ab | c | d
    assert right_spans == [(0, 1), (1, 3), (3, 4)]  # a | bc | d
    assert align_by_characters(left_spans, right_spans) == [[0, 1], [1], [2]]
    assert common_segments(left_spans, right_spans) == [
        (range(0, 2), range(0, 2)),
        (range(2, 3), range(2, 3)),
    ]

    char_spans = token_char_spans(build_tokenizer(), "cba")
    pair_spans = token_char_spans(build_pair_tokenizer(["cb"]), "cba")
    assert align_by_characters(pair_spans, char_spans) == [[0, 1], [2]]
    assert common_segments(pair_spans, char_spans) == [(range(0, 1), range(0, 2)), (range(1, 2), range(2, 3))]
    assert common_segments([], []) == []
    assert align_by_characters([(0, 0)], char_spans) == [[]]  # a special token covers no character
    with pytest.raises(ValueError, match="without gaps"):
        common_segments([(0, 1), (2, 3)], [(0, 3)])
    with pytest.raises(ValueError, match="not the same text"):
        common_segments([(0, 1)], [(0, 2)])
