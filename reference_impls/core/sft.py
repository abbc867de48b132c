"""Supervised fine-tuning on distilled text: the training step of every black-box method.

A training example is a sequence of text *segments*, each marked as supervised (the loss is
computed on its tokens) or context (masked with -100). A single-turn pair is
``[(prompt, False), (response, True)]``; a conversation alternates user turns (context) and
assistant turns (supervised, Vicuna-style), or supervises everything (``loss_on="all"``, the
ablation). The encoded sequence is ``[bos] segment … segment [eos]``; the final EOS is
supervised when the last segment is, so the model learns where a response ends.

Batches are bucketed by length (examples sorted by length inside shuffled windows) so that
short and long examples are not padded to each other: instruction data mixes 10- and
100-character sequences, and padding would otherwise triple the cost of a step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, RandomSampler, Sampler
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.checkpoints import RunCheckpoints
from reference_impls.core.tokenizer import pad_id
from reference_impls.core.training import Loss, collate, cross_entropy_objective, train_student
from reference_impls.tasks.instructions import TURN_SEPARATOR

# Examples per window that is sorted by length before it is cut into batches.
BUCKET_WINDOW_BATCHES = 16


@dataclass(frozen=True)
class TrainingExample:
    """Text segments with a loss mask: ``segments[i] = (text, supervised)``."""

    segments: tuple[tuple[str, bool], ...]

    @classmethod
    def single(cls, prompt: str, response: str) -> TrainingExample:
        """One instruction and its response (loss on the response)."""
        return cls(((prompt, False), (response, True)))

    @classmethod
    def conversation(cls, turns: Sequence[tuple[str, str]], *, loss_on: str = "assistant") -> TrainingExample:
        """A multi-turn conversation ``[(instruction, response), ...]``.

        Turns are joined by ``TURN_SEPARATOR``, which belongs to the assistant turn it ends (the
        model learns to end its turn). ``loss_on="assistant"`` supervises the assistant turns
        only (Vicuna); ``"all"`` every token (the ablation).
        """
        if loss_on not in ("assistant", "all"):
            raise ValueError(f"loss_on must be 'assistant' or 'all', got {loss_on!r}")
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        segments: list[tuple[str, bool]] = []
        for index, (user, assistant) in enumerate(turns):
            end = TURN_SEPARATOR if index < len(turns) - 1 else ""
            segments += [(user, loss_on == "all"), (assistant + end, True)]
        return cls(tuple(segments))

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


def encode_example(
    tokenizer: PreTrainedTokenizerBase, example: TrainingExample
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of ``[bos] segments [eos]``; labels -100 outside supervised segments."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos_token — set one before training")
    ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels: list[int] = [-100] * len(ids)
    for text, supervised in example.segments:
        tokens = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids += tokens
        labels += tokens if supervised else [-100] * len(tokens)
    last_supervised = example.segments[-1][1]
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id if last_supervised else -100)
    return ids, labels


def bucketed_loader(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[TrainingExample], *, batch_size: int, seed: int = 0
) -> DataLoader:
    """Length-bucketed, shuffled batches of ``input_ids``, ``attention_mask``, ``labels``.

    Raises:
        ValueError: No examples, or no example has a supervised token.
    """
    if not examples:
        raise ValueError("no training examples: the pipeline produced no data (see its filter counts)")
    rows = [encode_example(tokenizer, e) for e in examples]
    if not any(label != -100 for _, labels in rows for label in labels):
        raise ValueError("no supervised tokens in the training examples")
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    window = batch_size * BUCKET_WINDOW_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(rows[i][0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    pad = pad_id(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        list(range(len(rows))),
        batch_sampler=ShuffledBatches(batches, generator),
        generator=generator,
        collate_fn=lambda indices: collate([rows[i] for i in indices], pad),
    )


class ShuffledBatches(Sampler[list[int]]):
    """Fixed batches of row indices, in a new order every epoch drawn from ``generator``.

    A batch sampler (not a dataset of batches) so that ``accelerate`` can give each process its
    share of the batches; the order comes from a `RandomSampler` over the batches, so it is the
    order a ``DataLoader(batches, batch_size=None, shuffle=True)`` would draw.
    """

    def __init__(self, batches: list[list[int]], generator: torch.Generator) -> None:
        self.batches = batches
        self.order = RandomSampler(range(len(batches)), generator=generator)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for index in self.order:
            yield self.batches[index]


def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TrainingExample],
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    accelerator: Accelerator | None = None,
    loss: Loss = cross_entropy_objective,
    progress: bool = True,
    description: str = "Supervised fine-tuning",
    gradient_accumulation: int = 1,
    checkpoints: RunCheckpoints | None = None,
) -> list[float]:
    """Train ``model`` in place on ``examples`` (by default token cross-entropy on their supervised
    segments; a recipe may bring its own ``loss``); returns the loss curve. The remaining options
    are `train_student`'s."""
    loader = bucketed_loader(tokenizer, examples, batch_size=batch_size, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return train_student(
            model,
            loader,
            loss,
            steps,
            accelerator,
            learning_rate=learning_rate,
            progress=progress,
            description=description,
            gradient_accumulation=gradient_accumulation,
            checkpoints=checkpoints,
        )
