r"""Distillation between models with different tokenizers: alignment, ULD and DSKD (with CMA).

The token-level losses of `reference_impls.losses` compare two distributions entry by entry, which
needs one shared vocabulary (they raise `VocabularyMismatchError` otherwise). This module holds
what the two cross-tokenizer methods need instead:

1. **Alignment.** Both models read the same prompt and response, each tokenized with its own
   tokenizer, so position $t$ of one sequence need not cover the same text as position $t$ of the
   other. `align_response_starts` does what ULD does: left-align the two response spans and cut
   to the shorter one. `align_by_characters` and `common_segments` use character offsets instead
   (which student token covers which teacher tokens), as content-aware methods (GOLD's extended
   ULD in TRL; analysis of DSKD-CMA's learned alignment) need.
2. **ULD** (`uld_loss`, Boizard et al., `boizard2025uld`): L1 distance between the two sorted
   probability vectors, the closed-form optimal transport cost when every token-to-token move
   costs the same.
3. **DSKD** (`dskd_loss`, `dskd_cma_loss`, Zhang et al., `zhang2024dskd`): projectors carry hidden
   states across the two models so each comparison uses one LM head; for different vocabularies
   a cross-model attention (CMA) learns the token alignment.

Conventions are those of `reference_impls.losses`: labels already aligned with the logits (the
caller shifts: `logits[:, :-1]` with `labels[:, 1:]`; hidden states and input ids are sliced like
the logits), `-100` ignored, float32 accumulation, teacher detached, per-token mean with a clamped
denominator or `num_items_in_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from reference_impls.losses import IGNORE_INDEX, Reduction, forward_kl, hard_label_ce
from reference_impls.losses.numerics import finite_log_softmax, reduce_positions, upcast

Span = tuple[int, int]

# --- 1. alignment ----------------------------------------------------------------------------------


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


def _check_labels_2d(name: str, labels: Tensor) -> None:
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
    _check_labels_2d("student_labels", student_labels)
    _check_labels_2d("teacher_labels", teacher_labels)
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


# --- 2. ULD ----------------------------------------------------------------------------------------


def _sorted_probs(logits: Tensor, temperature: float) -> Tensor:
    # -inf entries (masked vocabulary) get probability exactly 0 and no NaN, as in losses.py.
    return finite_log_softmax(upcast(logits) / temperature).exp().sort(dim=-1, descending=True).values


def uld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_labels: Tensor,
    teacher_labels: Tensor,
    *,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    skip_student_eos: bool = False,
    skip_teacher_eos: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    r"""Universal Logit Distillation: L1 distance between sorted next-token distributions.

    At each aligned response position $t$ (see `align_response_starts`),

    $$\mathrm{ULD}_t = \sum_{i=1}^{|V|} \big|\tilde q_t(i) - \tilde p_t(i)\big|,$$

    where $\tilde q_t$, $\tilde p_t$ are $\mathrm{softmax}(z_s/T_s)$ and $\mathrm{softmax}(z_t/T_t)$
    sorted in decreasing order, the smaller vocabulary padded with zeros to
    $|V| = \max(|V_s|, |V_t|)$. With a transport cost of 1 between any two distinct tokens and no
    known token mapping, this is the paper's closed form of the Wasserstein-1 distance; it ignores
    which token carries which probability (invariant to permuting either vocabulary).

    Verified against llm-recipes `models/distillation_model.py::DistillationLoss` (Nicolas-BZRD
    @8e69e7a: separate temperatures, default 1 in `configs/distillation.py`; descending sort;
    zero padding; left alignment at the answer start; `min` of the two answer sizes) and DSKD
    `code/criterions/universal_logit_distillation.py`. Differences, on purpose: positions are
    reduced by the per-token mean over all aligned pairs of the batch (llm-recipes averages per
    sequence, then over sequences; DSKD sums and divides by the student token count). The paper's
    objective adds this to cross-entropy: $\mathcal{L}_{CE} + \lambda\,\mathrm{ULD}$ with
    $\lambda$ = `distil_factor` = 1.5 (llm-recipes `configs/distillation.py`). Paper: `boizard2025uld`.

    Args:
        student_logits: `[batch, S, V_s]` student logits (gradients flow here).
        teacher_logits: `[batch, T, V_t]` teacher logits (detached inside); `V_t` may differ.
        student_labels: `[batch, S]` student labels aligned with its logits; `-100` ignored.
        teacher_labels: `[batch, T]` teacher labels aligned with its logits; `-100` ignored.
        student_temperature: $T_s > 0$.
        teacher_temperature: $T_t > 0$.
        skip_student_eos: drop the student's last response position (its EOS label).
        skip_teacher_eos: drop the teacher's last response position.
        reduction: `"mean"` over aligned pairs, `"sum"`, or `"none"` (`[batch, L]`, 0 where unpaired).
        num_items_in_batch: if given, the sum is divided by it (aligned pairs in the whole
            accumulated batch).

    Returns:
        A scalar (float32, or float64 for float64 inputs), or `[batch, L]` for `"none"`.

    Raises:
        ValueError: logits are not `[batch, seq, V]`, labels do not match them, or a temperature is not > 0.
    """
    for name, logits, labels in (
        ("student", student_logits, student_labels),
        ("teacher", teacher_logits, teacher_labels),
    ):
        if logits.dim() != 3 or labels.shape != logits.shape[:2]:
            raise ValueError(
                f"{name} logits must be [batch, seq, vocab] with labels [batch, seq]; got "
                f"{tuple(logits.shape)} and {tuple(labels.shape)} (shift before calling: logits[:, :-1], labels[:, 1:])"
            )
    for name, value in (
        ("student_temperature", student_temperature),
        ("teacher_temperature", teacher_temperature),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")

    alignment = align_response_starts(
        student_labels, teacher_labels, skip_student_eos=skip_student_eos, skip_teacher_eos=skip_teacher_eos
    )
    rows = torch.arange(student_logits.shape[0], device=student_logits.device).unsqueeze(1)
    # Only the aligned positions are softmaxed and sorted: the cost is O(L |V| log |V|).
    student = _sorted_probs(student_logits[rows, alignment.student_positions], student_temperature)
    teacher = _sorted_probs(teacher_logits.detach()[rows, alignment.teacher_positions], teacher_temperature)
    gap = student.shape[-1] - teacher.shape[-1]
    student = nn.functional.pad(student, (0, max(-gap, 0)))
    teacher = nn.functional.pad(teacher, (0, max(gap, 0))).to(student.dtype)
    per_position = (student - teacher).abs().sum(-1)
    pair_labels = torch.where(alignment.mask, 0, IGNORE_INDEX)
    return reduce_positions(per_position, pair_labels, reduction, num_items_in_batch)


# --- 3. DSKD ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelOutputs:
    """What DSKD reads from one model, all sliced like the logits (aligned with `labels`).

    Attributes:
        logits: `[batch, L, V]` next-token logits.
        hidden: `[batch, L, d]` last-layer hidden states (`output_hidden_states=True`, `[-1]`).
        labels: `[batch, L]` target ids; `-100` ignored.
        head: `[V, d]` LM-head weight (`model.get_output_embeddings().weight`); detached inside.
        input_ids: `[batch, L]` input ids (CMA only).
        embeddings: `[V, d]` token-embedding table (`model.get_input_embeddings().weight`; CMA only).
    """

    logits: Tensor
    hidden: Tensor
    labels: Tensor
    head: Tensor
    input_ids: Tensor | None = None
    embeddings: Tensor | None = None


class DSKDProjectors(nn.Module):
    """The learned projectors of DSKD: linear maps with bias between the two hidden widths.

    As in DSKD `configs/projector_config.json` + `code/distiller.py`: `t2s` is `t-s`
    ($d_t \\to d_s$), `s2t` is `s-t` ($d_s \\to d_t$), and, for CMA, `query` is `2s-2t`
    ($2d_s \\to 2d_t$). The scripts train them with their own learning rate, `PROJECTOR_LR` = 1e-3
    (`scripts/gpt2/dskd_gpt2_base.sh`, `dskd_cma_gpt2_base.sh`).

    Args:
        student_width: $d_s$, the student's hidden size.
        teacher_width: $d_t$, the teacher's hidden size.
        cross_model_attention: also build the `query` projector used by `dskd_cma_loss`.
    """

    def __init__(
        self, student_width: int, teacher_width: int, *, cross_model_attention: bool = False
    ) -> None:
        super().__init__()
        self.t2s = nn.Linear(teacher_width, student_width)
        self.s2t = nn.Linear(student_width, teacher_width)
        self.query = nn.Linear(2 * student_width, 2 * teacher_width) if cross_model_attention else None


@dataclass(frozen=True)
class DSKDLoss:
    """DSKD's objective and its parts, each already divided by the student's token count.

    Attributes:
        total: $(1-w)\\,\\mathrm{CE} + w\\,\\mathrm{KD}$, what to back-propagate.
        ce: the student's cross-entropy with its labels.
        kd: `t2s_kd + t2s_ce + s2t_kd`.
        t2s_kd: divergence of the student from the projected teacher (student space).
        t2s_ce: cross-entropy of the projected teacher (trains the t2s projector).
        s2t_kd: forward KL of the teacher from the projected student (teacher space).
        t2s_accuracy: share of student tokens the projected teacher predicts correctly (no gradient).
    """

    total: Tensor
    ce: Tensor
    kd: Tensor
    t2s_kd: Tensor
    t2s_ce: Tensor
    s2t_kd: Tensor
    t2s_accuracy: Tensor


def _read_out(hidden: Tensor, head: Tensor) -> Tensor:
    """Logits of `hidden` through a frozen LM head: the head weight is detached (DSKD's `.detach()`)."""
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    return hidden.to(dtype) @ head.detach().to(dtype).transpose(0, 1)


def _project(projector: nn.Module, hidden: Tensor) -> Tensor:
    """Apply a projector in its own dtype (float32 by default, whatever the model's dtype)."""
    return projector(hidden.to(next(projector.parameters()).dtype))


def _combine(
    student: ModelOutputs,
    t2s_logits: Tensor,
    t2s_kd_sum: Tensor,
    s2t_kd_sum: Tensor,
    kd_rate: float,
    num_items_in_batch: int | Tensor | None,
) -> DSKDLoss:
    # DSKD sums every term over tokens and divides the whole loss by the number of *student*
    # target tokens (code/distillation.py: loss_denom from output_batch["label"]).
    valid = student.labels != IGNORE_INDEX
    denominator = valid.sum().clamp_min(1) if num_items_in_batch is None else num_items_in_batch
    ce = hard_label_ce(student.logits, student.labels, reduction="sum") / denominator
    t2s_ce = hard_label_ce(t2s_logits, student.labels, reduction="sum") / denominator
    t2s_kd, s2t_kd = t2s_kd_sum / denominator, s2t_kd_sum / denominator
    kd = t2s_kd + t2s_ce + s2t_kd
    with torch.no_grad():
        correct = (t2s_logits.argmax(-1) == student.labels) & valid
        accuracy = correct.sum() / valid.sum().clamp_min(1)
    return DSKDLoss((1 - kd_rate) * ce + kd_rate * kd, ce, kd, t2s_kd, t2s_ce, s2t_kd, accuracy)


def dskd_loss(
    student: ModelOutputs,
    teacher: ModelOutputs,
    projectors: DSKDProjectors,
    *,
    divergence: Callable[..., Tensor] = forward_kl,
    kd_temperature: float = 2.0,
    kd_rate: float = 0.5,
    num_items_in_batch: int | Tensor | None = None,
) -> DSKDLoss:
    r"""Dual-space KD for a shared vocabulary (same tokenizer, possibly different widths).

    With $h_s, h_t$ the last hidden states, $W_s, W_t$ the LM heads (frozen here) and $y$ the labels:

    $$z^{t\to s} = P_{t\to s}(h_t)\, W_s^\top, \qquad z^{s\to t} = P_{s\to t}(h_s)\, W_t^\top,$$
    $$\mathrm{KD} = D\big(\mathrm{sg}(z^{t\to s}) \,\|\, z_s\big) + \mathrm{CE}(z^{t\to s}, y)
      + \mathrm{KL}\big(z_t \,\|\, z^{s\to t}\big), \qquad
      \mathcal{L} = (1-w)\,\mathrm{CE}(z_s, y) + w\,\mathrm{KD}.$$

    $D$ and the s2t KL use temperature $T$ on both sides; the CE terms use $T=1$; no $T^2$.
    Verified against DSKD `code/criterions/dual_space_kd.py` (songmzhang/DSKD @4f8c172) and
    `various_divergence.py`; defaults from `scripts/gpt2/dskd_gpt2_base.sh`: `KD_RATE` $w$ = 0.5,
    `KD_TEMP` $T$ = 2.0, `KD_OBJ` = forward_kl. Paper: `zhang2024dskd`.

    Args:
        student: the student's outputs (gradients flow into `logits` and `hidden`).
        teacher: the teacher's outputs (detached inside); `teacher.labels` masks the s2t term.
        projectors: the t2s and s2t projectors (trained by this loss).
        divergence: $D$ for the student-space term, any function of `reference_impls.losses`
            (`functools.partial` for its own hyper-parameter).
        kd_temperature: $T > 0$.
        kd_rate: $w \in [0, 1]$.
        num_items_in_batch: replaces the student token count as the denominator.

    Raises:
        ValueError: the vocabularies differ (use `dskd_cma_loss`) or the shapes disagree.
    """
    if student.logits.shape[-1] != teacher.logits.shape[-1]:
        raise ValueError(
            f"dskd_loss needs one vocabulary; student has {student.logits.shape[-1]} entries, teacher "
            f"{teacher.logits.shape[-1]}. For different tokenizers use dskd_cma_loss (cross-model attention)."
        )
    if student.labels.shape != teacher.labels.shape:
        raise ValueError("with a shared tokenizer both sequences must have the same shape (same token ids)")
    t2s_logits = _read_out(_project(projectors.t2s, teacher.hidden.detach()), student.head)
    t2s_kd = divergence(
        student.logits, t2s_logits, student.labels, temperature=kd_temperature, reduction="sum"
    )
    s2t_logits = _read_out(_project(projectors.s2t, student.hidden), teacher.head)
    s2t_kd = forward_kl(
        s2t_logits, teacher.logits, teacher.labels, temperature=kd_temperature, reduction="sum"
    )
    return _combine(student, t2s_logits, t2s_kd, s2t_kd, kd_rate, num_items_in_batch)


def _index_embeddings(model: ModelOutputs, name: str) -> Tensor:
    """`[embed(input); embed(target)]` per position, 0-id where the label is ignored (DSKD's `formal_*`)."""
    if model.input_ids is None or model.embeddings is None:
        raise ValueError(
            f"dskd_cma_loss needs {name}.input_ids and {name}.embeddings (the token-embedding table)"
        )
    valid = model.labels != IGNORE_INDEX
    inputs = torch.where(valid, model.input_ids, 0)
    targets = torch.where(valid, model.labels, 0)
    table = upcast(model.embeddings.detach())
    return torch.cat([table[inputs], table[targets]], dim=-1)


def cross_model_attention(
    student_queries: Tensor, teacher_keys: Tensor, student_mask: Tensor, teacher_mask: Tensor
) -> Tensor:
    r"""Attention logits of CMA: $QK^\top/\sqrt{2 d_t}$, with $-10^5$ added where a pair is masked.

    Args:
        student_queries: `[batch, S, 2 d_t]` projected student index embeddings $Q$.
        teacher_keys: `[batch, T, 2 d_t]` normalised teacher index embeddings $K$.
        student_mask: `[batch, S]` True at student response positions.
        teacher_mask: `[batch, T]` True at teacher response positions.

    Returns:
        `[batch, S, T]` logits; softmax over the last axis gives the teacher-to-student weights,
        over the middle axis (transposed) the student-to-teacher weights.
    """
    scores = student_queries @ teacher_keys.transpose(-1, -2) / math.sqrt(teacher_keys.shape[-1])
    pair = student_mask.unsqueeze(-1) & teacher_mask.unsqueeze(1)
    # An additive -1e5 as in the authors' code (not -inf): a row with no valid key stays finite.
    return scores + (~pair).to(scores.dtype) * -1e5


def dskd_cma_loss(
    student: ModelOutputs,
    teacher: ModelOutputs,
    projectors: DSKDProjectors,
    *,
    divergence: Callable[..., Tensor] = forward_kl,
    kd_temperature: float = 2.0,
    teacher_temperature: float = 1.0,
    kd_rate: float = 0.5,
    num_items_in_batch: int | Tensor | None = None,
) -> DSKDLoss:
    r"""DSKD with cross-model attention (CMA), for different tokenizers and vocabularies.

    Index embeddings $e = [E(x_i); E(y_i)]$ (input and target token of each position, frozen)
    give queries from the student and keys from the teacher; $\sigma(\cdot)$ is a global std:

    $$A = \frac{P_q(e^s)\,\big(e^t/\sigma(e^t)\big)^\top}{\sqrt{2 d_t}}, \quad
      z^{t\to s} = \mathrm{softmax}_{\text{teacher}}(A)\; P_{t\to s}\!\Big(\tfrac{h_t}{\sigma(h_t)}
        + \tfrac{E_t(y^t)}{\sigma(E_t(y^t))}\Big)\, W_s^\top, \quad
      z^{s\to t} = \mathrm{softmax}_{\text{student}}(A^\top)\; P_{s\to t}(h_s)\, W_t^\top.$$

    $\mathrm{KD} = \mathrm{CE}(z^{t\to s}, y^s) + \sum_{\text{correct}} D(\mathrm{sg}(z^{t\to s})/T_t \| z_s)
    + \mathrm{KL}(z_t \| z^{s\to t})$, where the student-space term only counts positions whose
    $z^{t\to s}$ argmax is the student's label (`t2s_acc_mask`) and the s2t term is summed over
    teacher positions. Everything is divided by the student token count, then combined as in
    `dskd_loss`. Verified against DSKD `code/criterions/dual_space_kd_with_cross_model_attention.py`
    (@4f8c172); defaults: `KD_RATE` 0.5, `KD_TEMP` 2.0, `KD_OBJ` forward_kl
    (`scripts/gpt2/dskd_cma_gpt2_base.sh`), `--teacher-temperature` 1.0 (`code/arguments.py`).
    Paper: `zhang2024dskd`.

    Args:
        student: student outputs, with `input_ids` and `embeddings` (gradients flow into
            `logits` and `hidden`).
        teacher: teacher outputs, with `input_ids` and `embeddings` (all detached inside).
        projectors: built with `cross_model_attention=True`.
        divergence: $D$ of the student-space term (a `reference_impls.losses` function).
        kd_temperature: $T > 0$ on both sides of the KD terms.
        teacher_temperature: extra $T_t$ dividing the projected teacher's logits in $D$ only.
        kd_rate: $w \in [0, 1]$.
        num_items_in_batch: replaces the student token count as the denominator.
    """
    if projectors.query is None:
        raise ValueError("dskd_cma_loss needs DSKDProjectors(..., cross_model_attention=True)")
    if student.labels.shape[0] != teacher.labels.shape[0]:
        raise ValueError("student and teacher batches must hold the same examples, row by row")
    student_mask = student.labels != IGNORE_INDEX
    teacher_mask = teacher.labels != IGNORE_INDEX
    student_index = _index_embeddings(student, "student")
    teacher_index = _index_embeddings(teacher, "teacher")
    teacher_target = teacher_index[..., teacher_index.shape[-1] // 2 :]
    teacher_hidden = upcast(teacher.hidden.detach())

    # Global (whole-tensor) std normalisation of the teacher side, as in the authors' code.
    queries = _project(projectors.query, student_index)
    keys = (teacher_index / teacher_index.std()).to(queries.dtype)
    attention = cross_model_attention(queries, keys, student_mask, teacher_mask)

    teacher_values = _project(
        projectors.t2s, teacher_hidden / teacher_hidden.std() + teacher_target / teacher_target.std()
    )
    t2s_logits = _read_out(attention.softmax(-1) @ teacher_values, student.head)
    correct = t2s_logits.argmax(-1) == student.labels
    kd_labels = torch.where(correct, student.labels, IGNORE_INDEX)
    t2s_kd = divergence(
        student.logits,
        t2s_logits / teacher_temperature,
        kd_labels,
        temperature=kd_temperature,
        reduction="sum",
    )

    student_values = _project(projectors.s2t, student.hidden)
    s2t_logits = _read_out(attention.transpose(-1, -2).softmax(-1) @ student_values, teacher.head)
    s2t_kd = forward_kl(
        s2t_logits, teacher.logits, teacher.labels, temperature=kd_temperature, reduction="sum"
    )
    return _combine(student, t2s_logits, t2s_kd, s2t_kd, kd_rate, num_items_in_batch)
