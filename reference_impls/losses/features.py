r"""Feature (hint) losses: distances between hidden states, attention maps and self-relations.

The hint/feature branch of white-box KD matches what a teacher computes *inside*, not only its
output distribution. The losses share one convention, the token losses' where it applies:

* **Shapes.** Hidden states are ``[batch, seq, width]`` (or any ``[..., width]`` without a mask,
  e.g. ``[batch, width]`` for one position per sequence); attention maps ``[batch, heads, seq, seq]``
  (query rows, key columns). Student and teacher widths may differ only where a loss says so
  (`relation_kl`); elsewhere map the student first with a projector
  (`reference_impls.white_box.features.projector`).
* **Masking.** ``mask`` is the ``[batch, seq]`` attention mask (1 = a real token). Padded positions
  contribute nothing and are not counted: padding a batch further never changes a loss. For maps,
  a padded query row is dropped and padded key columns are ignored inside the kept rows.
* **Teacher detached, float32 at least.** The teacher's tensors carry no gradient; both sides are
  upcast to float32 (float64 stays float64), as the token losses do.
* **Reduction.** ``"mean"`` over kept positions (each position's value is already averaged over
  its width or its heads), ``"sum"`` over them, or ``"none"``: the ``[batch, seq]`` per-position
  values with 0 at padded positions.

Which paper uses which: `hidden_mse` (TinyBERT's hidden and embedding losses, Minitron, DistillKit
``hs_mse``), `hidden_cosine` (DistilBERT's cosine loss; Patient KD's normalised distance is
exactly twice it, see `normalized_distance`), `attention_mse` (TinyBERT), `attention_kl` (MiniLM),
`relation_kl` (MiniLM's value relation, MiniLMv2's query/key/value relations).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reference_impls.losses.numerics import Reduction, reduce_valid, upcast


def _pair(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    return student.to(dtype), teacher.detach().to(dtype)


def _valid_positions(mask: Tensor | None, per_position: Tensor) -> Tensor:
    """The kept positions of a ``per_position`` tensor: all of them without a mask."""
    if mask is None:
        return torch.ones_like(per_position, dtype=torch.bool)
    if mask.shape != per_position.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must be [batch, seq] = {tuple(per_position.shape)}")
    return mask.to(per_position.device) != 0


def _check_same_shape(kind: str, student: Tensor, teacher: Tensor, fix: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student {kind} {tuple(student.shape)} and teacher {kind} {tuple(teacher.shape)} must have "
            f"the same shape. {fix}"
        )


WIDTH_FIX = (
    "If only the widths differ, map the student's states first: "
    "reference_impls.white_box.features.projector(student_width, teacher_width)."
)


def hidden_mse(
    student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    r"""Mean squared error per position, averaged over the width: $\frac1d\|h_S - h_T\|^2$."""
    _check_same_shape("hidden states", student_hidden, teacher_hidden, WIDTH_FIX)
    student, teacher = _pair(student_hidden, teacher_hidden)
    per_position = (student - teacher).pow(2).mean(-1)
    return reduce_valid(per_position, _valid_positions(mask, per_position), reduction)


def hidden_cosine(
    student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    r"""$1 - \cos(h_S, h_T)$ per position: DistilBERT's cosine embedding loss with target 1.

    Blind to each vector's length, so it aligns directions only; 0 for parallel states, 2 for
    opposite ones. A zero vector counts as orthogonal to everything (cosine 0).
    """
    _check_same_shape("hidden states", student_hidden, teacher_hidden, WIDTH_FIX)
    student, teacher = _pair(student_hidden, teacher_hidden)
    per_position = 1.0 - torch.nn.functional.cosine_similarity(student, teacher, dim=-1, eps=1e-12)
    return reduce_valid(per_position, _valid_positions(mask, per_position), reduction)


def normalized_distance(
    student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    r"""Patient KD's $\|h_S/\|h_S\| - h_T/\|h_T\|\|^2$, which equals $2 - 2\cos = 2\,$`hidden_cosine`."""
    return 2.0 * hidden_cosine(student_hidden, teacher_hidden, mask, reduction)


def _map_entries(mask: Tensor | None, maps: Tensor) -> tuple[Tensor, Tensor]:
    """Kept query rows ``[batch, seq]`` and kept (query, key) entries ``[batch, 1, seq, seq]``."""
    rows = _valid_positions(mask, maps[:, 0, :, 0])
    return rows, (rows[:, :, None] & rows[:, None, :])[:, None]


def _check_maps(student_maps: Tensor, teacher_maps: Tensor, fix: str) -> None:
    if student_maps.dim() != 4 or student_maps.shape[-1] != student_maps.shape[-2]:
        raise ValueError(f"attention maps must be [batch, heads, seq, seq], got {tuple(student_maps.shape)}")
    _check_same_shape("attention maps", student_maps, teacher_maps, fix)


def attention_mse(
    student_maps: Tensor, teacher_maps: Tensor, mask: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    r"""TinyBERT's attention loss: squared error between maps, averaged over heads and kept keys.

    The maps may be attention probabilities (what ``output_attentions=True`` returns) or raw
    scores before the softmax (what TinyBERT's code compares: its model returns them); entries at
    padded positions are ignored either way, so a score of ``-inf`` or ``-10000`` there is harmless.
    The heads must match one to one.
    """
    _check_maps(
        student_maps, teacher_maps, "TinyBERT pairs heads one to one; use relation_kl for other head counts."
    )
    student, teacher = _pair(student_maps, teacher_maps)
    rows, entries = _map_entries(mask, student)
    squared = torch.where(entries, student - teacher, 0.0).pow(2)
    keys = rows.sum(-1).clamp_min(1)[:, None, None]  # kept keys per query row, per sequence
    per_position = (squared.sum(-1) / keys).mean(1)  # mean over keys, then over heads
    return reduce_valid(per_position, rows, reduction)


def attention_kl(
    student_maps: Tensor, teacher_maps: Tensor, mask: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    r"""MiniLM's attention transfer: $\mathrm{KL}(A_T \| A_S)$ per head and query row, averaged over heads.

    Both maps are attention *probabilities* (rows summing to 1 over the kept keys), as
    ``output_attentions=True`` returns them. A student probability of exactly 0 where the teacher's
    is not would be an infinite KL; it is clamped to the smallest positive float instead.
    """
    _check_maps(
        student_maps, teacher_maps, "MiniLM pairs heads one to one; use relation_kl for other head counts."
    )
    student, teacher = _pair(student_maps, teacher_maps)
    rows, entries = _map_entries(mask, student)
    tiny = torch.finfo(student.dtype).tiny
    terms = teacher * (teacher.clamp_min(tiny).log() - student.clamp_min(tiny).log())
    per_position = torch.where(entries & (teacher > 0), terms, 0.0).sum(-1).mean(1)
    return reduce_valid(per_position, rows, reduction)


def self_relation_log_probs(states: Tensor, relation_heads: int, mask: Tensor | None = None) -> Tensor:
    r"""MiniLMv2's relation: split ``[batch, seq, width]`` into ``relation_heads`` heads of width
    $d_r$ and return $\log\operatorname{softmax}(A A^\top / \sqrt{d_r})$ over keys,
    ``[batch, relation_heads, seq, seq]``; padded keys get probability 0 (log-prob 0)."""
    batch, seq, width = states.shape
    if relation_heads < 1 or width % relation_heads:
        raise ValueError(
            f"relation_heads must divide the width: {width} states into {relation_heads} heads. "
            "Choose a head count that divides both the student's and the teacher's width."
        )
    heads = upcast(states).reshape(batch, seq, relation_heads, width // relation_heads).transpose(1, 2)
    scores = heads @ heads.transpose(-1, -2) / math.sqrt(width // relation_heads)
    keys = _valid_positions(mask, states[..., 0])[:, None, None, :]
    log_probs = torch.log_softmax(scores.masked_fill(~keys, torch.finfo(scores.dtype).min), dim=-1)
    return torch.where(keys, log_probs, 0.0)


def relation_kl(
    student_states: Tensor,
    teacher_states: Tensor,
    relation_heads: int,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""$\mathrm{KL}(R_T \| R_S)$ between self-relations (`self_relation_log_probs`), per relation
    head and query row, averaged over heads.

    Widths may differ (the relations are ``seq × seq``), and so may the models' attention head
    counts: the states are split into ``relation_heads`` heads on both sides. MiniLM's value
    relation is this with the values and the attention head count; MiniLMv2 applies it to the
    queries, keys and values of one layer and sums the three.
    """
    if student_states.shape[:2] != teacher_states.shape[:2]:
        raise ValueError(
            f"student states {tuple(student_states.shape)} and teacher states {tuple(teacher_states.shape)} "
            "must agree in batch and sequence length (the widths may differ)"
        )
    student, teacher = _pair(student_states, teacher_states)
    log_q = self_relation_log_probs(student, relation_heads, mask)
    log_p = self_relation_log_probs(teacher, relation_heads, mask)
    rows = _valid_positions(mask, student[..., 0])
    terms = torch.where(rows[:, None, None, :], log_p.exp() * (log_p - log_q), 0.0)
    per_position = terms.sum(-1).mean(1)
    return reduce_valid(per_position, rows, reduction)
