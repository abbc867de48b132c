r"""Distillation between models with different tokenizers: the alignment ULD and DSKD share.

The token-level losses of `reference_impls.losses` compare two distributions entry by entry, which
needs one shared vocabulary (they raise `VocabularyMismatchError` otherwise). The two
cross-tokenizer methods of this branch, `uld` and `dskd` (their losses are in their own modules),
need instead:

1. **Alignment.** Both models read the same prompt and response, each tokenized with its own
   tokenizer, so position $t$ of one sequence need not cover the same text as position $t$ of the
   other. `align_response_starts` does what ULD does: left-align the two response spans and cut
   to the shorter one. `align_by_characters` and `common_segments` use character offsets instead
   (which student token covers which teacher tokens), as content-aware methods (GOLD's extended
   ULD in TRL; analysis of DSKD-CMA's learned alignment) need.

Conventions are those of `reference_impls.losses`: labels already aligned with the logits (the
caller shifts: `logits[:, :-1]` with `labels[:, 1:]`; hidden states and input ids are sliced like
the logits), `-100` ignored, float32 accumulation, teacher detached, per-token mean with a clamped
denominator or `num_items_in_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from reference_impls.losses import IGNORE_INDEX

Span = tuple[int, int]

# --- alignment ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseAlignment:
    """Paired positions of two tokenizations, left-aligned at the response start.

    Attributes:
        student_positions: `[batch, L]` indices into the student's sequence dimension.
        teacher_positions: `[batch, L]` indices into the teacher's sequence dimension.
        mask: `[batch, L]` True where the pair is real; padding pairs point at index 0.
    """

    student_positions: Tensor
    teacher_positions: Tensor
    mask: Tensor


def check_labels_2d(name: str, labels: Tensor) -> None:
    if labels.dim() != 2:
        raise ValueError(f"{name} must be [batch, seq], got shape {tuple(labels.shape)}")


def align_response_starts(
    student_labels: Tensor,
    teacher_labels: Tensor,
    *,
    skip_student_eos: bool = False,
    skip_teacher_eos: bool = False,
) -> ResponseAlignment:
    """Pair the i-th response position of the student with the i-th of the teacher (ULD's alignment).

    The response of a row is its positions with `label != -100`, in order (one contiguous span in
    practice, starting at the first valid label, as in llm-recipes `__get_start_and_size_answers`
    and DSKD `universal_logit_distillation.py`). Row $b$ keeps $\\min(n^s_b, n^t_b)$ pairs; with
    `skip_*_eos` the last valid position (the EOS label) of that model is dropped first (llm-recipes
    `skip_student_eos`/`skip_teacher_eos`, default False there; TRL GOLD defaults to True).

    Args:
        student_labels: `[batch, S]` student labels, aligned with the student logits.
        teacher_labels: `[batch, T]` teacher labels, aligned with the teacher logits.
        skip_student_eos: drop the student's last response position.
        skip_teacher_eos: drop the teacher's last response position.

    Returns:
        The paired positions; `L` is the longest kept length in the batch (0 if nothing is kept).
    """
    check_labels_2d("student_labels", student_labels)
    check_labels_2d("teacher_labels", teacher_labels)
    if student_labels.shape[0] != teacher_labels.shape[0]:
        raise ValueError(
            f"student and teacher batches differ ({student_labels.shape[0]} vs {teacher_labels.shape[0]}): "
            "each row must hold the same example in both tokenizations"
        )

    def valid_first(labels: Tensor, skip_last: bool) -> tuple[Tensor, Tensor]:
        valid = labels != IGNORE_INDEX
        # A stable sort of the "invalid" flags lists valid positions first, in order.
        order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
        count = valid.sum(1) - int(skip_last)
        return order, count.clamp_min(0)

    student_order, student_count = valid_first(student_labels, skip_student_eos)
    teacher_order, teacher_count = valid_first(teacher_labels, skip_teacher_eos)
    kept = torch.minimum(student_count, teacher_count)
    length = int(kept.max()) if kept.numel() else 0
    mask = torch.arange(length, device=kept.device) < kept.unsqueeze(1)
    return ResponseAlignment(
        student_positions=torch.where(mask, student_order[:, :length], 0),
        teacher_positions=torch.where(mask, teacher_order[:, :length], 0),
        mask=mask,
    )


def token_char_spans(tokenizer: PreTrainedTokenizerBase, text: str) -> list[Span]:
    """Character span `(start, end)` of every token of `text` (no special tokens added).

    Raises:
        ValueError: the tokenizer is not a fast tokenizer (only those report offsets).
    """
    if not tokenizer.is_fast:
        raise ValueError(
            f"{type(tokenizer).__name__} reports no character offsets; load the fast tokenizer (use_fast=True)"
        )
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


def align_by_characters(student_spans: Sequence[Span], teacher_spans: Sequence[Span]) -> list[list[int]]:
    """For each student token, the teacher tokens that share at least one character with it.

    Spans are half-open character ranges of the same text (from `token_char_spans`); a token with
    an empty span (a special token) overlaps nothing.

    Returns:
        `result[i]` is the ordered list of teacher token indices overlapping student token `i`.
    """
    return [
        [j for j, (t_start, t_end) in enumerate(teacher_spans) if max(s_start, t_start) < min(s_end, t_end)]
        for s_start, s_end in student_spans
    ]


def _check_tiling(name: str, spans: Sequence[Span]) -> None:
    for i, (start, end) in enumerate(spans):
        previous_end = spans[i - 1][1] if i else 0
        if start != previous_end or end <= start:
            raise ValueError(
                f"{name} token {i} spans {start}..{end} but must start at {previous_end} and be non-empty: "
                "pass the spans of the plain text (no special tokens), which tile it without gaps"
            )


def common_segments(
    student_spans: Sequence[Span], teacher_spans: Sequence[Span]
) -> list[tuple[range, range]]:
    """The finest segmentation of the text on which both tokenizations agree.

    Each segment is a run of student tokens and a run of teacher tokens covering exactly the same
    characters: a boundary is kept only where both tokenizers have one. This is the grouping that
    GOLD's extended ULD (TRL `gold_trainer.py`, `use_extended_uld`) merges probabilities over.

    Returns:
        `(student_tokens, teacher_tokens)` index ranges, in text order.

    Raises:
        ValueError: the spans do not tile the same text `[0, n)` contiguously.
    """
    _check_tiling("student", student_spans)
    _check_tiling("teacher", teacher_spans)
    student_end = student_spans[-1][1] if student_spans else 0
    teacher_end = teacher_spans[-1][1] if teacher_spans else 0
    if student_end != teacher_end:
        raise ValueError(
            f"student spans cover {student_end} characters, teacher spans {teacher_end}: not the same text"
        )
    segments: list[tuple[range, range]] = []
    i = j = 0
    start_i = start_j = 0
    while i < len(student_spans):
        # Advance whichever token ends first until both end on the same character.
        if student_spans[i][1] < teacher_spans[j][1]:
            i += 1
        elif teacher_spans[j][1] < student_spans[i][1]:
            j += 1
        else:
            segments.append((range(start_i, i + 1), range(start_j, j + 1)))
            i, j = i + 1, j + 1
            start_i, start_j = i, j
    return segments
