"""Batching and the training loop shared by every logit-level method.

The loop owns the plumbing and nothing method-specific: it batches ``[bos] prompt response
[eos]`` sequences, runs the (frozen) teacher, shifts logits against labels *once* so that
position ``t`` predicts token ``t+1``, and hands the objective aligned tensors

* ``student_logits``: ``[batch, seq, vocab]``,
* ``teacher_logits``: ``[batch, seq, vocab]`` or ``None``,
* ``labels``: ``[batch, seq]`` with -100 on prompt and padding positions.

At large vocabularies the ``[batch, seq, vocab]`` logits are what runs out of memory. An
objective that also offers a ``from_hidden`` method (see ``FusedObjective``; the word-level
methods do) is then given the final hidden states and LM-head weights instead, and computes the
same loss chunk by chunk (``reference_impls.losses.fused``) without ever holding the logits. This
is the default once ``batch × seq × vocab`` reaches ``FUSED_MIN_LOGITS``; the embedded tiny models
(vocabulary 100) stay far below it and use the readable logits path.

It uses HF Accelerate, so ``accelerate launch`` (DDP) scales it unchanged, and the accelerator's
mixed precision (bf16 on GPU) and trackers (TensorBoard) apply to it. With ``checkpoints`` it saves
its state every few steps and resumes from it (`reference_impls.core.checkpoints`). With
``gradient_accumulation = k`` an optimizer step sums the gradients of ``k`` loader batches, each
weighted by its share of the step's target tokens (over all processes): for the per-token-mean
losses of this package the step's gradient is then exactly the gradient of the per-token mean over
all ``k`` batches — not the mean of ``k`` per-batch means, which over-weights short batches.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.checkpoints import RunCheckpoints, Stateful, restore_random_states, slug
from reference_impls.core.data_sources import OnlineSource, Sampler
from reference_impls.core.tokenizer import encode_pair, pad_id
from reference_impls.losses import hard_label_ce

Objective = Callable[[Tensor, Tensor | None, Tensor], Tensor]
"""``(student_logits [B,T,V], teacher_logits [B,T,V] | None, labels [B,T]) -> scalar loss``."""


class StepLoss(ABC):
    """A loss computed from the models and the whole batch, for methods that need more than aligned
    logits of one batch (MiniLLM: rollouts, stored log-probs and a language-modelling batch; ULD and
    DSKD: two tokenizations). The loop still owns the optimizer, clipping, schedule and data."""

    def prepare(self, student: torch.nn.Module, teacher: PreTrainedModel | None) -> None:  # noqa: B027
        """Called once before training (e.g. DSKD adds its projectors to the student). Default: nothing."""

    def schedule(self, step: int, steps: int) -> None:  # noqa: B027
        """Called before each optimizer step with its index (0-based) and the phase's total, for
        losses whose terms change during training (TinyBERT's and MiniLM's stages). Stateless
        on purpose: a resumed run passes the same indices. Default: nothing."""

    def release(self, student: torch.nn.Module) -> None:  # noqa: B027
        """Called once after training, before the student is saved: remove what `prepare` added
        to it (projectors), so the checkpoint is the plain model. Default: nothing."""

    @abstractmethod
    def __call__(
        self, student: torch.nn.Module, teacher: PreTrainedModel | None, batch: dict[str, Any], vocab_size: int | None
    ) -> Tensor:
        """``(student, teacher, batch, vocab_size) -> scalar loss``."""


Loss = Objective | StepLoss
"""What a recipe trains the distilled student with: an `Objective` on aligned logits (the common
case, which the loop may compute fused) or a `StepLoss`."""


def needs_teacher(loss: Loss) -> bool:
    """Whether the loop runs the teacher for ``loss``: always, except for plain cross-entropy on the
    training sequences (sequence-level KD and every black-box method learn from text only) and a
    loss that says ``needs_teacher = False`` (its objective then receives ``teacher_logits=None``)."""
    return loss is not cross_entropy_objective and getattr(loss, "needs_teacher", True)


FUSED_MIN_LOGITS = 2**25
"""Logits entries per step (``batch × seq × vocab``, about 33.5M: 128 MiB per float32 logits
tensor, e.g. 256 tokens at a 128k vocabulary) from which a fused objective is used by default.
Below it the logits are small and the readable path costs nothing; above it the full logits,
their softmaxes and gradients (several such tensors) start to dominate memory."""


@dataclass(frozen=True)
class HeadInputs:
    """What a model's logits are made of: ``logits = hidden @ weight.T + bias``.

    Attributes:
        hidden: ``[batch, seq, hidden]`` final hidden states (after the final norm), aligned
            with the labels like the logits would be.
        weight: ``[vocab, hidden]`` LM-head weight (cut to the shared vocabulary if asked).
        bias: ``[vocab]`` or ``None``.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None


@runtime_checkable
class FusedObjective(Protocol):
    """An objective that can also compute its loss from hidden states and LM heads."""

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor) -> Tensor: ...

    def from_hidden(self, student: HeadInputs, teacher: HeadInputs | None, labels: Tensor) -> Tensor: ...


def use_fused_path(objective: Objective, num_tokens: int, vocab_size: int, fused: bool | None) -> bool:
    """Whether a step takes the fused path: asked for (``fused=True``), or by default
    (``fused=None``) when the objective supports it and ``num_tokens × vocab_size`` reaches
    ``FUSED_MIN_LOGITS``.

    Raises:
        ValueError: ``fused=True`` with an objective that has no ``from_hidden``.
    """
    supported = isinstance(objective, FusedObjective)
    if fused and not supported:
        raise ValueError("fused=True needs an objective with a from_hidden method (e.g. a word-level method)")
    if fused is None:
        return supported and num_tokens * vocab_size >= FUSED_MIN_LOGITS
    return fused


def _plain_linear_head(model: PreTrainedModel) -> bool:
    """Logits are exactly ``head(last hidden state)``: no soft-capping or scaling after the head."""
    config = model.config
    return (
        getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", 1.0) in (None, 1.0)
        and getattr(config, "logits_scaling", 1.0) in (None, 1.0)
    )


def head_inputs(
    model: torch.nn.Module, unwrapped: PreTrainedModel, batch: dict[str, Tensor], vocab_size: int | None
) -> HeadInputs:
    """Final hidden states and LM head of a forward pass, skipping the full logits.

    ``model`` may be the distributed wrapper of ``unwrapped`` (its forward keeps gradient sync).
    """
    kwargs: dict[str, Any] = {"output_hidden_states": True}
    if "logits_to_keep" in inspect.signature(unwrapped.forward).parameters:
        kwargs["logits_to_keep"] = 1  # the head on the last position only: no [B, T, V] tensor
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
    head = unwrapped.get_output_embeddings()
    keep = slice(None) if vocab_size is None else slice(0, vocab_size)
    bias = getattr(head, "bias", None)
    return HeadInputs(outputs.hidden_states[-1], head.weight[keep], None if bias is None else bias[keep])


def collate(rows: Sequence[tuple[list[int], list[int]]], pad: int) -> dict[str, Tensor]:
    """Right-pad ``(input_ids, labels)`` rows into ``[batch, seq]`` tensors (labels padded -100)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, row_labels) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(row_labels)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def make_dataloader(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> DataLoader:
    """Batches of ``input_ids``, ``attention_mask``, ``labels`` (each ``[batch, seq]``) and
    ``example_index`` (``[batch]``, the row's position in ``prompts``).

    With ``teacher_tokenizer`` (cross-tokenizer methods) each batch also holds the same examples
    tokenized for the teacher under ``teacher_input_ids``, ``teacher_attention_mask`` and
    ``teacher_labels``. The shuffling order depends only on ``seed``, so runs with the same seed
    see the same data.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = [encode_pair(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    pad = pad_id(tokenizer)
    teacher_rows: list[tuple[list[int], list[int]]] = []
    if teacher_tokenizer is not None:
        teacher_rows = [encode_pair(teacher_tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    teacher_pad = pad_id(teacher_tokenizer) if teacher_tokenizer is not None else pad

    def collate_indexed(indices: list[int]) -> dict[str, Tensor]:
        batch = collate([rows[i] for i in indices], pad)
        batch["example_index"] = torch.tensor(indices, dtype=torch.long)
        if teacher_rows:
            teacher = collate([teacher_rows[i] for i in indices], teacher_pad)
            batch.update({f"teacher_{key}": value for key, value in teacher.items()})
        return batch

    return DataLoader(
        list(range(len(rows))),  # a list is a valid map-style dataset
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_indexed,
    )


def next_token_view(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Align predictions with targets: ``logits[:, :-1]`` predicts ``labels[:, 1:]``.

    Args:
        logits: ``[batch, seq, vocab]`` model outputs on the full sequence.
        labels: ``[batch, seq]`` token ids aligned with the inputs, -100 where ignored.

    Returns:
        ``([batch, seq-1, vocab], [batch, seq-1])``.
    """
    return logits[:, :-1], labels[:, 1:]


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_student(
    student: PreTrainedModel,
    batches: DataLoader,
    loss: Loss,
    steps: int,
    accelerator: Accelerator | None,
    teacher: PreTrainedModel | None = None,
    *,
    learning_rate: float = 3e-3,
    warmup_fraction: float = 0.05,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    vocab_size: int | None = None,
    fused: bool | None = None,
    source: OnlineSource | None = None,
    sampler: Sampler | None = None,
    validation_batches: DataLoader | None = None,
    progress: bool = True,
    description: str = "Training the student",
    gradient_accumulation: int = 1,
    checkpoints: RunCheckpoints | None = None,
) -> list[float]:
    """Train ``student`` in place for ``steps`` optimizer steps (cycling over ``batches``).

    Args:
        student: The model to train.
        batches: Yields dicts with ``input_ids``, ``attention_mask``, ``labels`` ``[batch, seq]``.
        loss: An `Objective` on aligned ``(student_logits, teacher_logits | None, labels)``, or a
            `StepLoss` that computes the step's loss from the models and the batch.
        steps: Number of optimizer steps.
        accelerator: Places models and data and wraps them for distributed runs; ``None``
            trains in this process only, on the student's device (used to build the teacher,
            which the main process does alone).
        teacher: Frozen teacher whose logits are passed to the objective; ``None`` for
            objectives that need no teacher logits.
        learning_rate: Peak AdamW learning rate.
        warmup_fraction: Share of ``steps`` spent in linear warmup.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping threshold.
        vocab_size: If given, logits are cut to their first ``vocab_size`` entries, for a teacher
            and student that share a tokenizer but pad their embedding matrices differently.
        fused: Compute the loss from hidden states and LM heads without the full logits (needs
            an objective with ``from_hidden`` and plain linear heads); ``None`` decides per step
            with ``use_fused_path`` (fused from ``FUSED_MIN_LOGITS`` logits entries on).
        source: A dynamic data source (on-policy, mixtures, replay): at every step it turns the
            loader's batch into the batch to train on, using ``sampler``.
        sampler: Continues batch prompts with the current student or the teacher (needed with
            ``source``).
        validation_batches: Held-out batches; the student's cross-entropy on them is reported to
            ``source.on_validation`` before training and every ``source.validation_interval``
            steps (DistiLLM's adaptive schedule).
        progress: Show a progress bar (main process only).
        description: Progress bar label; also names the phase's checkpoints and logged curves.
        gradient_accumulation: Loader batches per optimizer step (token-weighted, see above).
        checkpoints: Save this phase's state every ``checkpoints.every`` steps and at the end,
            and resume from the latest saved state if there is one.

    Returns:
        The loss at each step (of this process): the per-target-token mean over the step's batches.
    """
    if gradient_accumulation < 1:
        raise ValueError(f"gradient_accumulation must be ≥ 1, got {gradient_accumulation}")
    phase = checkpoints.phase(description) if checkpoints is not None else None
    resumed = phase.load(student, accelerator) if phase is not None else None  # weights, before wrapping
    optimizer = torch.optim.AdamW(student.parameters(), lr=learning_rate, weight_decay=weight_decay)
    warmup = max(1, int(warmup_fraction * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    if accelerator is not None:
        # The schedule is stepped once per optimizer step, by us: Accelerate's wrapper would step it
        # once per process and run through a `steps`-long schedule in steps / processes.
        model, optimizer, loader = accelerator.prepare(student, optimizer, batches)
        device, backward, clip = accelerator.device, accelerator.backward, accelerator.clip_grad_norm_
        show = progress and accelerator.is_main_process
    else:
        model, loader, device = student, batches, next(student.parameters()).device
        backward, clip, show = Tensor.backward, torch.nn.utils.clip_grad_norm_, progress
    if teacher is not None:
        # Never wrapped for distributed training: it has no gradients to synchronise.
        teacher.to(device).eval().requires_grad_(False)
    unwrapped = student if accelerator is None else accelerator.unwrap_model(model)
    heads_are_linear = _plain_linear_head(unwrapped) and (teacher is None or _plain_linear_head(teacher))
    if fused and not heads_are_linear:
        raise ValueError("fused=True needs plain linear LM heads (no logit soft-capping or scaling)")
    step_loss = loss if isinstance(loss, StepLoss) else None
    if step_loss is None:
        use_fused_path(loss, 0, 0, fused)  # fails early if fused=True cannot be honoured
    # A step loss reads its own outputs (an encoder classifier has no output embeddings).
    output_size = None if step_loss is not None else unwrapped.get_output_embeddings().weight.shape[0]

    if source is not None and sampler is None:
        raise ValueError(f"the data source '{source.name}' samples sequences: pass a sampler")
    interval = None if source is None else source.validation_interval(steps)
    if interval is not None and validation_batches is None:
        raise ValueError(f"the data source '{source.name}' needs validation_batches")

    def validate() -> None:
        source.on_validation(validation_loss(model, validation_batches, device, vocab_size))

    def step_value(batch: dict[str, Any]) -> Tensor:
        if step_loss is not None:
            return step_loss(model, teacher, batch, vocab_size)
        if heads_are_linear and use_fused_path(loss, batch["input_ids"].numel(), vocab_size or output_size, fused):
            return _fused_loss(model, unwrapped, teacher, batch, loss, vocab_size)
        return _logits_loss(model, teacher, batch, loss, vocab_size)

    # What a checkpoint holds besides weights, optimizer and schedule: the stateful parts.
    parts: dict[str, Stateful] = {
        name: part for name, part in (("source", source), ("sampler", sampler), ("loss", loss))
        if isinstance(part, Stateful)
    }
    data = _cycle(loader)
    curve: list[float] = []
    if resumed is not None:
        optimizer.load_state_dict(resumed.optimizer)
        scheduler.load_state_dict(resumed.scheduler)
        curve = resumed.curve
        for _ in range(resumed.step * gradient_accumulation):  # the loader back at the same position
            next(data)
        for name, part in parts.items():
            part.load_state_dict(resumed.parts[name])
        restore_random_states(resumed.random)  # last: later draws are the uninterrupted run's
    autocast = accelerator.autocast if accelerator is not None else nullcontext
    log_key = slug(description)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    columns.append(TextColumn("loss {task.fields[loss]:.3f}"))
    model.train()
    with Progress(*columns, disable=not show, transient=False) as bar:
        latest = curve[-1] if curve else float("nan")
        task = bar.add_task(description, total=steps, completed=len(curve), loss=latest)
        if interval is not None and resumed is None:
            validate()  # the reference loss before training
        while len(curve) < steps:
            if step_loss is not None:
                step_loss.schedule(len(curve), steps)
            micro_batches = []
            for _ in range(gradient_accumulation):
                batch = {key: value.to(device) for key, value in next(data).items()}
                if source is not None:
                    batch = source.next_batch(len(curve), steps, batch, sampler)
                micro_batches.append(batch)
            weights, shares = _token_weights(micro_batches, accelerator)
            value_sum = 0.0
            for index, (batch, weight, share) in enumerate(zip(micro_batches, weights, shares, strict=True)):
                last = index == len(micro_batches) - 1
                # Gradients are synchronised across processes once per optimizer step.
                sync = nullcontext() if last or accelerator is None else accelerator.no_sync(model)
                with sync:
                    with autocast():  # the forward passes; backward runs outside autocast
                        value = step_value(batch)
                    backward(value * weight)
                value_sum += value.item() * share
            clip(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            curve.append(value_sum)
            bar.update(task, advance=1, loss=curve[-1])
            if accelerator is not None:  # the trackers (TensorBoard), if the run started any
                learning_rate_now = scheduler.get_last_lr()[0]
                accelerator.log({f"{log_key}/loss": curve[-1], f"{log_key}/lr": learning_rate_now}, step=len(curve))
            if interval is not None and len(curve) % interval == 0 and len(curve) < steps:
                validate()
            if phase is not None and phase.due(len(curve), steps):
                phase.save(len(curve), unwrapped, optimizer, scheduler, curve, parts, accelerator)
    model.eval()
    return curve


def _cycle(loader: DataLoader) -> Iterator[dict[str, Tensor]]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def target_tokens(batch: dict[str, Any]) -> int:
    """Positions a batch's loss is averaged over: labels other than -100 after the shift."""
    labels = batch.get("labels")
    return 0 if labels is None else int((labels[:, 1:] != -100).sum())


def _token_weights(
    batches: list[dict[str, Any]], accelerator: Accelerator | None
) -> tuple[list[float], list[float]]:
    """Per micro-batch: the weight of its (per-token mean) loss in the backward pass, and its share
    of this process's tokens (for the logged loss).

    Weight ``n_i · P / N`` (``n_i`` tokens of the micro-batch, ``N`` over all micro-batches of every
    process, ``P`` processes, whose gradients DDP averages) makes the step's gradient that of the
    per-token mean over all of them. One batch on one process: weight 1, as without accumulation.
    """
    counts = [target_tokens(batch) for batch in batches]
    local = sum(counts)
    processes, total = 1, local
    if accelerator is not None and accelerator.num_processes > 1:
        processes = accelerator.num_processes
        device = accelerator.device
        total = int(accelerator.reduce(torch.tensor(local, device=device), reduction="sum"))
    if total == 0:  # no target tokens anywhere (a step loss without labels): plain averaging
        return [1.0 / len(batches)] * len(batches), [1.0 / len(batches)] * len(batches)
    shares = [count / local if local else 1.0 / len(batches) for count in counts]
    if len(batches) == 1 and processes == 1:
        return [1.0], shares
    return [count * processes / total for count in counts], shares


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module, batches: DataLoader, device: torch.device, vocab_size: int | None = None
) -> float:
    """The model's mean next-token cross-entropy over held-out batches (left in train mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = {key: value.to(device) for key, value in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        student_logits, labels = next_token_view(logits, batch["labels"])
        total += float(hard_label_ce(student_logits, labels))
        count += 1
    model.train(was_training)
    return total / max(count, 1)


def aligned_logits(
    net: torch.nn.Module, batch: dict[str, Tensor], prefix: str = "", vocab_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """``net``'s logits on the batch's ``{prefix}input_ids`` cut to ``vocab_size`` and aligned with
    ``{prefix}labels`` (shifted once): ``([B, T-1, V], [B, T-1])``. Gradients as the caller's context."""
    out = net(input_ids=batch[f"{prefix}input_ids"], attention_mask=batch[f"{prefix}attention_mask"])
    logits = out.logits if vocab_size is None else out.logits[..., :vocab_size]
    return next_token_view(logits, batch[f"{prefix}labels"])


def _logits_loss(
    model: torch.nn.Module,
    teacher: PreTrainedModel | None,
    batch: dict[str, Tensor],
    objective: Objective,
    vocab_size: int | None,
) -> Tensor:
    """The readable path: full logits of both models, shifted once, into the objective."""
    student_logits, labels = aligned_logits(model, batch, vocab_size=vocab_size)
    teacher_logits = None
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = aligned_logits(teacher, batch, vocab_size=vocab_size)[0]
    return objective(student_logits, teacher_logits, labels)


def _fused_loss(
    model: torch.nn.Module,
    unwrapped: PreTrainedModel,
    teacher: PreTrainedModel | None,
    batch: dict[str, Tensor],
    objective: FusedObjective,
    vocab_size: int | None,
) -> Tensor:
    """The memory-lean path: hidden states and LM heads, shifted once, into ``from_hidden``."""
    student = head_inputs(model, unwrapped, batch, vocab_size)
    hidden, labels = next_token_view(student.hidden, batch["labels"])
    student = HeadInputs(hidden, student.weight, student.bias)
    teacher_head = None
    if teacher is not None:
        with torch.no_grad():
            teacher_head = head_inputs(teacher, teacher, batch, vocab_size)
        shifted = next_token_view(teacher_head.hidden, batch["labels"])[0]
        teacher_head = HeadInputs(shifted, teacher_head.weight, teacher_head.bias)
    return objective.from_hidden(student, teacher_head, labels)


def cross_entropy_objective(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor) -> Tensor:
    """Plain next-token cross-entropy on the labels (the no-distillation baseline).

    Args:
        student_logits: ``[batch, seq, vocab]``.
        teacher_logits: Ignored.
        labels: ``[batch, seq]``, -100 ignored; per-token mean.
    """
    return hard_label_ce(student_logits, labels)
