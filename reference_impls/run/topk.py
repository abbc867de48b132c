"""``--teacher-topk K``: train from the teacher's top-k log-probs, stored once on disk.

The teacher runs once over the training sequences (`reference_impls.teachers.topk.precompute_topk`,
safetensors, cached by what determines it); every training step then reads its rows instead of
running the teacher. It applies to a token-level forward or reverse KL on fixed sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from reference_impls.core.cache import cache_root, digest
from reference_impls.core.logits_loss import WordLevelObjective
from reference_impls.core.training import Loss, StepLoss, aligned_logits
from reference_impls.losses import forward_kl, reverse_kl
from reference_impls.losses.topk import topk_divergence
from reference_impls.teachers.topk import TopKTeacherSignals, load_topk, precompute_topk, topk_kwargs


@dataclass(frozen=True)
class TopKTeacherLoss(StepLoss):
    """The divergence to the stored top-k teacher distribution (the teacher is not run)."""

    signals: TopKTeacherSignals
    divergence: str
    temperature: float

    def __call__(
        self, student: torch.nn.Module, teacher: Any, batch: dict[str, Tensor], vocab_size: int | None
    ) -> Tensor:
        student_logits, labels = aligned_logits(student, batch, vocab_size=vocab_size)
        targets = self.signals.lookup(batch["example_index"], labels)
        return topk_divergence(
            student_logits, labels=labels, divergence=self.divergence, temperature=self.temperature,
            **topk_kwargs(targets),
        )


def offline_topk_loss(
    method_id: str,
    loss: Loss,
    online: bool,
    *,
    k: int,
    teacher: PreTrainedModel,
    identity: dict[str, str],
    responses: Sequence[str],
    loader: DataLoader,
    batch_size: int,
    vocab_size: int | None,
    progress: bool,
) -> tuple[TopKTeacherLoss, dict[str, Any]]:
    """Precompute (or reuse) the teacher's top-k file for these training sequences; return the loss
    that trains from it and what to record in the run config. ``identity`` names the teacher, the
    data and the code the file is computed with (its cache key, with the responses).

    Raises:
        ValueError: ``loss`` is not a token-level forward or reverse KL, or the data is online.
    """
    divergence = getattr(loss, "divergence", None) if isinstance(loss, WordLevelObjective) else None
    if online or divergence not in (forward_kl, reverse_kl):
        raise ValueError(
            f"--teacher-topk trains a token-level forward or reverse KL on fixed sequences; "
            f"'{method_id}' is not one (use e.g. forward-kl or reverse-kl, without --source student/mixed)"
        )
    temperature = float(loss.hyperparameters.get("temperature", 1.0))
    fingerprint = digest({**identity, "responses": list(responses)})
    path = cache_root() / "teacher-topk" / f"{fingerprint}-k{k}-t{temperature:g}.safetensors"
    # Same rows, in index order, for the one-off pass.
    ordered = DataLoader(loader.dataset, batch_size=batch_size, shuffle=False, collate_fn=loader.collate_fn)
    if not path.is_file():
        precompute_topk(
            teacher, ordered, k=k, temperature=temperature, path=path, fingerprint=fingerprint,
            vocab_size=vocab_size, progress=progress,
        )
    signals = load_topk(path, fingerprint=fingerprint, num_examples=len(responses), temperature=temperature, k=k)
    record = {"offline_topk": k, "tail": "residual", "file": str(path)}
    return TopKTeacherLoss(signals, divergence.__name__, temperature), record
