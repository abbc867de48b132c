"""Input checks of MiniLLM's pure functions: shapes aligned with the response mask, finite values
where the mask is set, and hyper-parameter ranges, each failing with what to pass instead."""

from __future__ import annotations

import torch
from torch import Tensor


def check_same_shape(response_mask: Tensor, **tensors: Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.shape != response_mask.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but response_mask has {tuple(response_mask.shape)}; "
                "every per-token tensor must be [batch, response_len], aligned with the response tokens "
                "(position t holds the value for response token t)"
            )


def check_logits(student_logits: Tensor, response_mask: Tensor) -> None:
    if student_logits.shape[:-1] != response_mask.shape:
        raise ValueError(
            f"student_logits has shape {tuple(student_logits.shape)}; expected [batch, response_len, vocab] "
            f"with [batch, response_len] = {tuple(response_mask.shape)}: the logits that predict each "
            "response token (for a causal LM, logits[:, prompt_len - 1 : -1])"
        )


def check_finite_where_valid(response_mask: Tensor, **tensors: Tensor) -> None:
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor[response_mask]).all():
            raise ValueError(
                f"{name} is not finite at some response token inside response_mask. A sampled token must "
                "have non-zero probability under every model: sample without top-k/top-p truncation "
                "(MiniLLM uses top_k=0, top_p=1.0) or mask those tokens out"
            )


def as_float(tensor: Tensor) -> Tensor:
    """Upcast to at least float32 (float64 stays float64)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
