"""Batched decoding of responses: prompts in, response texts out.

Prompts are left-padded so that every row's next token is generated at the same (last) column;
``model.generate`` builds the matching position ids from the attention mask. Each row is cut
at its first EOS, so an EOS at the very first step yields the empty string.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.tokenizer import encode_prompt, pad_id


def _left_pad(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
) -> list[str]:
    """Decode one response per prompt (greedy unless ``do_sample``).

    Args:
        model: A causal LM; it is put in eval mode for the call and restored afterwards.
        tokenizer: Encodes prompts as ``[bos] prompt`` (the training convention).
        prompts: Prompt texts.
        max_new_tokens: Upper bound on response tokens (EOS excluded).
        batch_size: Prompts decoded together.
        do_sample: Sample from the model (at ``temperature``) instead of taking the argmax.
        temperature: Sampling temperature, used only when ``do_sample``.

    Returns:
        The response texts (special tokens removed), ``""`` when EOS came first.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad, eos = pad_id(tokenizer), tokenizer.eos_token_id
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        input_ids, attention_mask = _left_pad(rows, pad)
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_k=None,
            top_p=None,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        for row in output[:, input_ids.shape[1] :].tolist():
            # Cut at the first EOS ourselves: rows that finished early are padded after it.
            if eos in row:
                row = row[: row.index(eos)]
            texts.append(tokenizer.decode(row, skip_special_tokens=True))
    model.train(was_training)
    return texts
