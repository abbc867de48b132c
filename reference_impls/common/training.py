"""Batching and the training loop shared by every logit-level method.

The loop owns the plumbing and nothing method-specific: it batches ``[bos] prompt response
[eos]`` sequences, runs the (frozen) teacher, shifts logits against labels *once* so that
position ``t`` predicts token ``t+1``, and hands the objective aligned tensors

* ``student_logits``: ``[batch, seq, vocab]``,
* ``teacher_logits``: ``[batch, seq, vocab]`` or ``None``,
* ``labels``: ``[batch, seq]`` with -100 on prompt and padding positions.

It uses HF Accelerate, so ``accelerate launch`` (DDP, FSDP, DeepSpeed) scales it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..losses import hard_label_ce
from .tokenizer import encode_pair, pad_id

Objective = Callable[[Tensor, Tensor | None, Tensor], Tensor]
"""``(student_logits [B,T,V], teacher_logits [B,T,V] | None, labels [B,T]) -> scalar loss``."""


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
) -> DataLoader:
    """Batches of ``input_ids``, ``attention_mask``, ``labels`` (each ``[batch, seq]``).

    The shuffling order depends only on ``seed``, so runs with the same seed see the same data.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = [encode_pair(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    pad = pad_id(tokenizer)
    return DataLoader(
        rows,  # a list is a valid map-style dataset
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda batch: collate(batch, pad),
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
    objective: Objective,
    steps: int,
    accelerator: Accelerator | None,
    teacher: PreTrainedModel | None = None,
    *,
    learning_rate: float = 3e-3,
    warmup_fraction: float = 0.05,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    vocab_size: int | None = None,
    progress: bool = True,
    description: str = "Training the student",
) -> list[float]:
    """Train ``student`` in place for ``steps`` optimizer steps (cycling over ``batches``).

    Args:
        student: The model to train.
        batches: Yields dicts with ``input_ids``, ``attention_mask``, ``labels`` ``[batch, seq]``.
        objective: The loss on aligned ``(student_logits, teacher_logits | None, labels)``.
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
        progress: Show a progress bar (main process only).
        description: Progress bar label.

    Returns:
        The loss at each step (of this process).
    """
    optimizer = torch.optim.AdamW(student.parameters(), lr=learning_rate, weight_decay=weight_decay)
    warmup = max(1, int(warmup_fraction * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    if accelerator is not None:
        model, optimizer, loader, scheduler = accelerator.prepare(student, optimizer, batches, scheduler)
        device, backward, clip = accelerator.device, accelerator.backward, accelerator.clip_grad_norm_
        show = progress and accelerator.is_main_process
    else:
        model, loader, device = student, batches, next(student.parameters()).device
        backward, clip, show = Tensor.backward, torch.nn.utils.clip_grad_norm_, progress
    if teacher is not None:
        # Never wrapped for distributed training: it has no gradients to synchronise.
        teacher.to(device).eval().requires_grad_(False)

    losses: list[float] = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    columns.append(TextColumn("loss {task.fields[loss]:.3f}"))
    model.train()
    with Progress(*columns, disable=not show, transient=False) as bar:
        task = bar.add_task(description, total=steps, loss=float("nan"))
        data = iter(loader)
        while len(losses) < steps:
            try:
                batch = next(data)
            except StopIteration:  # a new epoch
                data = iter(loader)
                batch = next(data)
            batch = {key: value.to(device) for key, value in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            teacher_logits = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    ).logits
            if vocab_size is not None:
                logits = logits[..., :vocab_size]
                teacher_logits = None if teacher_logits is None else teacher_logits[..., :vocab_size]
            student_logits, labels = next_token_view(logits, batch["labels"])
            if teacher_logits is not None:
                teacher_logits = next_token_view(teacher_logits, batch["labels"])[0]
            loss = objective(student_logits, teacher_logits, labels)
            backward(loss)
            clip(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(task, advance=1, loss=losses[-1])
    model.eval()
    return losses


def cross_entropy_objective(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor) -> Tensor:
    """Plain next-token cross-entropy on the labels (the no-distillation baseline).

    Args:
        student_logits: ``[batch, seq, vocab]``.
        teacher_logits: Ignored.
        labels: ``[batch, seq]``, -100 ignored; per-token mean.
    """
    return hard_label_ce(student_logits, labels)
