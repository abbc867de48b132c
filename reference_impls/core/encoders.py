"""Encoder (BERT-era) models' data and plain objectives: labelled texts, masked-LM inputs, and
the two losses every encoder is trained with before or beside distillation.

A text is encoded as ``[CLS] text [SEP]`` (the embedded tokenizer's ``<bos>`` and ``<eos>``), so
position 0 is the [CLS] position whose hidden state Patient KD and the classifier head read.
Batches hold ``input_ids`` and ``attention_mask`` (``[batch, seq]``), ``label`` (``[batch]``) and
``example_index`` (``[batch]``). The class label is deliberately not called ``labels``: the
training loop reads ``labels`` as next-token targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from reference_impls.core.tokenizer import pad_id
from reference_impls.core.training import StepLoss
from reference_impls.losses import IGNORE_INDEX

MLM_PROBABILITY = 0.15  # BERT (Devlin et al. 2019, §3.1): 15% of the tokens are chosen ...
MLM_MASK, MLM_RANDOM = 0.8, 0.1  # ... of which 80% become [MASK], 10% a random token, 10% stay


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``[CLS] text [SEP]`` token ids (``<bos>``/``<eos>`` where the tokenizer has no CLS/SEP)."""
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [t for t in (cls,) if t is not None] + ids + [t for t in (sep,) if t is not None]


def collate_texts(rows: Sequence[list[int]], pad: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for encoded texts."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def text_batches(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[int] | None = None,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
) -> DataLoader:
    """Batches of encoded ``texts`` (with ``label`` when ``labels`` are given), reshuffled every
    epoch in an order that depends only on ``seed``."""
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    rows = [encode_text(tokenizer, text) for text in texts]
    pad = pad_id(tokenizer)

    def collate(indices: list[int]) -> dict[str, Tensor]:
        batch = collate_texts([rows[i] for i in indices], pad)
        batch["example_index"] = torch.tensor(indices, dtype=torch.long)
        if labels is not None:
            batch["label"] = torch.tensor([labels[i] for i in indices], dtype=torch.long)
        return batch

    return DataLoader(
        list(range(len(rows))),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate,
    )


def mask_for_mlm(
    input_ids: Tensor,
    attention_mask: Tensor,
    tokenizer: PreTrainedTokenizerBase,
    probability: float = MLM_PROBABILITY,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking: ``(masked input_ids, mlm_labels)``, the labels ``-100`` except at chosen
    positions. Special tokens and padding are never chosen. Draws from ``generator`` (default:
    the global RNG, which a resumed run restores)."""
    if tokenizer.mask_token_id is None:
        raise ValueError(
            "masked-LM training needs a tokenizer with a mask token (build_encoder_tokenizer has one)"
        )
    special = torch.tensor(tokenizer.all_special_ids, device=input_ids.device)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special)
    chosen = eligible & (
        torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < probability
    )
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    masked = input_ids.clone()
    masked[chosen & (draw < MLM_MASK)] = tokenizer.mask_token_id
    replace = chosen & (draw >= MLM_MASK) & (draw < MLM_MASK + MLM_RANDOM)
    # Random replacements come from the ordinary (non-special) tokens.
    vocabulary = torch.arange(len(tokenizer), device=input_ids.device)
    ordinary = vocabulary[~torch.isin(vocabulary, special)]
    picks = torch.randint(len(ordinary), input_ids.shape, generator=generator, device=input_ids.device)
    masked[replace] = ordinary[picks][replace]
    return masked, labels


class LabelledTexts:
    """The ``data`` part of an encoder recipe: the suite's labelled training texts (the
    classification view), with the teacher model at hand (white-box)."""

    teacher_access = "model"

    def describe(self) -> dict[str, str]:
        return {"kind": "labelled-texts", "view": "classification"}


class LabelCrossEntropy(StepLoss):
    """Cross-entropy of a sequence classifier's logits with the batch's ``label``: the encoder
    baseline, the teacher's fine-tuning and the hard term of every encoder KD loss."""

    needs_teacher = False

    def __call__(
        self, student: torch.nn.Module, teacher: object, batch: dict[str, Tensor], vocab_size: object
    ) -> Tensor:
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["label"])


class MaskedLM(StepLoss):
    """BERT's masked-LM loss on a batch of texts (masking drawn afresh at every step)."""

    needs_teacher = False

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def __call__(
        self, student: torch.nn.Module, teacher: object, batch: dict[str, Tensor], vocab_size: object
    ) -> Tensor:
        masked, labels = mask_for_mlm(batch["input_ids"], batch["attention_mask"], self.tokenizer)
        logits = student(input_ids=masked, attention_mask=batch["attention_mask"]).logits
        if not (labels != IGNORE_INDEX).any():  # nothing chosen (a tiny batch): zero, not NaN
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
