r"""DSKD — dual-space knowledge distillation (Zhang et al., EMNLP 2024).

Logit KD compares two distributions produced by two different prediction heads. DSKD instead
projects each model's last hidden states into the *other* model's space and reads them out with
the other's (frozen) head, so both comparisons use one head: the projected teacher against the
student in the student's space, the projected student against the teacher in the teacher's
space. Trainable linear projectors carry the hidden states across widths. For different
vocabularies (the default here: the embedded student uses its own tokenizer), *cross-model
attention* (CMA) first aligns the two token sequences: queries from the student's token
embeddings, keys from the teacher's, and the attention moves teacher states to student positions.

The losses (`dskd_loss`, `dskd_cma_loss`) and the projectors come first below, then the recipe. Defaults are the authors' scripts (``scripts/gpt2/dskd_gpt2_base.sh``,
``dskd_cma_gpt2_base.sh``: ``KD_RATE`` 0.5, ``KD_TEMP`` 2.0, ``KD_OBJ`` forward KL). The scripts
give the projectors their own learning rate (1e-3); here they train with the student's. Key:
``zhang2024dskd``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reference_impls.core.data_sources import DatasetResponses
from reference_impls.core.recipe import Recipe, Students
from reference_impls.core.training import StepLoss, next_token_view
from reference_impls.losses import IGNORE_INDEX, forward_kl, hard_label_ce
from reference_impls.losses.numerics import upcast
from reference_impls.registry import register

PROJECTORS = "dskd_projectors"  # the submodule of the student that holds them (so they train with it)


def _outputs(net: torch.nn.Module, batch: dict[str, Tensor], prefix: str, cma: bool) -> ModelOutputs:
    """Logits, last hidden states, labels, head (and ids/embeddings for CMA), aligned once."""
    inputs = batch[f"{prefix}input_ids"]
    out = net(input_ids=inputs, attention_mask=batch[f"{prefix}attention_mask"], output_hidden_states=True)
    logits, labels = next_token_view(out.logits, batch[f"{prefix}labels"])
    core = getattr(net, "module", net)  # unwrap a distributed wrapper
    return ModelOutputs(
        logits=logits,
        hidden=out.hidden_states[-1][:, :-1],
        labels=labels,
        head=core.get_output_embeddings().weight,
        input_ids=inputs[:, :-1] if cma else None,
        embeddings=core.get_input_embeddings().weight if cma else None,
    )


# --- the loss --------------------------------------------------------------------------------------


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


# --- the recipe ------------------------------------------------------------------------------------


@dataclass
class DSKDStep(StepLoss):
    """One DSKD step; `prepare` attaches the projectors to the student before training."""

    cross_model_attention: bool = True
    kd_rate: float = 0.5
    kd_temperature: float = 2.0
    projectors: DSKDProjectors | None = field(default=None, repr=False)

    def prepare(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        """Create the projectors for the two widths and register them on the student."""
        self.projectors = DSKDProjectors(
            student.config.hidden_size,
            teacher.config.hidden_size,
            cross_model_attention=self.cross_model_attention,
        ).to(next(student.parameters()).device)
        student.add_module(PROJECTORS, self.projectors)

    def release(self, student: torch.nn.Module) -> None:
        """The projectors are training machinery: the saved student is the plain model."""
        student._modules.pop(PROJECTORS, None)

    def __call__(
        self, model: torch.nn.Module, teacher: Any, batch: dict[str, Tensor], vocab_size: int | None
    ) -> Tensor:
        if teacher is None or self.projectors is None:
            raise ValueError("DSKD needs the teacher (white-box) and prepare() before training")
        prefix = "teacher_" if "teacher_input_ids" in batch else ""
        student = _outputs(model, batch, "", self.cross_model_attention)
        with torch.no_grad():
            teacher_out = _outputs(teacher, batch, prefix, self.cross_model_attention)
        loss = dskd_cma_loss if self.cross_model_attention else dskd_loss
        return loss(
            student, teacher_out, self.projectors, kd_temperature=self.kd_temperature, kd_rate=self.kd_rate
        ).total


@register("dskd")
def dskd_recipe(
    cross_model_attention: bool = True, kd_rate: float = 0.5, kd_temperature: float = 2.0
) -> Recipe:
    """DSKD on the dataset's responses; with CMA (default) the student has its own tokenizer.

    Args:
        cross_model_attention: Different vocabularies, aligned by cross-model attention (the
            embedded student then uses the ``"pair"`` tokenizer); ``False`` is DSKD for a shared
            vocabulary.
        kd_rate: w in (1 − w)·CE + w·KD (``KD_RATE`` 0.5).
        kd_temperature: Temperature of the divergence terms (``KD_TEMP`` 2.0).
    """
    return Recipe(
        method_id="dskd",
        data=DatasetResponses(),
        loss=DSKDStep(cross_model_attention, kd_rate, kd_temperature),
        # DSKD-CMA aligns two tokenizations; plain DSKD needs the teacher's vocabulary.
        students=Students(tokenizer="pair" if cross_model_attention else None),
    )
