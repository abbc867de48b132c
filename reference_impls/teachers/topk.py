r"""Offline teacher signals: store the teacher's top-k log-probs once, then train without the teacher.

Word-level KD runs the teacher on every training step. When the data is fixed (dataset or
teacher-generated responses, not on-policy samples), the teacher's next-token distributions never
change, so they can be computed once and read back: this removes the teacher forward pass and its
memory from training (TRL #2255 and #1975 ask for it; DistillKit and EasyDistill do it with vLLM
top-k capture). A full `[tokens, V]` table is too large at LLM vocabularies, so only the teacher's
$k$ most likely tokens per response position are kept.

## The file

`precompute_topk` writes one safetensors file with, for the $N$ response positions of $E$ examples
(positions whose *shifted* label is not -100, i.e. the positions the training loss counts):

| tensor | shape | dtype | what |
|---|---|---|---|
| `indices` | `[N, k]` | int32 | the teacher's top-k token ids, most likely first |
| `logprobs` | `[N, k]` | float32 or float16 | $\log P_v$ at those ids (full-vocabulary softmax of $z_t/T$) |
| `tail_logmass` | `[N]` | float32 | $\log(1 - \sum_{v \in S} P_v)$, computed from the full logits ($-\infty$ when $k = V$) |
| `targets` | `[N]` | int32 | the label at each position (used to detect misaligned data) |
| `offsets` | `[E + 1]` | int64 | example $e$ owns rows `offsets[e]:offsets[e+1]` |

and, in the safetensors metadata: format name and version, $k$, $T$, the caller's teacher
fingerprint, the vocabulary size and the counts. `load_topk` checks all of it and raises
`TopKMismatchError` (another teacher, data set, vocabulary, $k$ or $T$) or `TopKFileError`
(truncated, corrupted or foreign file) with what to do. A training batch carries the dataset index
of each example; `TopKTeacherSignals.lookup` turns them into dense `[B, T, k]` tensors aligned with
the shifted labels.

The loss that trains from it, and what top-k truncation changes, is
`reference_impls.losses.topk.topk_divergence`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformers import PreTrainedModel

from reference_impls.core.cache import staged
from reference_impls.core.training import collate, next_token_view
from reference_impls.losses.numerics import IGNORE_INDEX

FORMAT_NAME = "kdatlas-topk"
FORMAT_VERSION = 1
Rows = Sequence[tuple[Sequence[int], Sequence[int]] | tuple[Sequence[int], Sequence[int], Sequence[int]]]
"""Examples as `(input_ids, labels)` (as `encode_pair` returns) or `(input_ids, attention_mask, labels)`,
labels aligned with `input_ids` (unshifted)."""

_REMEDY = "Run precompute_topk again for the current teacher and data (or pass the file made for them)."


class TopKFileError(ValueError):
    """The file is missing, unreadable, truncated, or not a kdatlas top-k file of this version."""


class TopKMismatchError(ValueError):
    """The file is valid but was made for another teacher, data set, vocabulary, k or temperature."""


# --- the stored signals and the lookup for a training batch ----------------------------------------


@dataclass(frozen=True)
class TopKTargets:
    r"""Teacher top-k targets for one batch, aligned with its shifted labels `[B, T]`.

    At positions whose label is -100 the entries are placeholders (ids `0..k-1`, uniform log-probs
    $-\log k$, tail $-\infty$) that the losses ignore.

    Attributes:
        indices: `[B, T, k]` int64 token ids.
        logprobs: `[B, T, k]` float32 teacher log-probs.
        tail_logmass: `[B, T]` float32 $\log(1 - \sum_{v \in S} P_v)$.
    """

    indices: Tensor
    logprobs: Tensor
    tail_logmass: Tensor


@dataclass(frozen=True, eq=False)  # tensors: compare fields explicitly, not with ==
class TopKTeacherSignals:
    """The contents of a top-k file (see the module docstring for the tensors)."""

    indices: Tensor
    logprobs: Tensor
    tail_logmass: Tensor
    targets: Tensor
    offsets: Tensor
    k: int
    temperature: float
    fingerprint: str
    vocab_size: int
    path: str = "<memory>"

    @property
    def num_examples(self) -> int:
        """Number of examples $E$."""
        return self.offsets.numel() - 1

    def check(
        self,
        *,
        fingerprint: str | None = None,
        num_examples: int | None = None,
        vocab_size: int | None = None,
        temperature: float | None = None,
        k: int | None = None,
    ) -> None:
        """Raise `TopKMismatchError` unless the file matches every expectation given (None skips one).

        Args:
            fingerprint: Teacher fingerprint string.
            num_examples: Number of examples in the data set.
            vocab_size: Shared vocabulary size.
            temperature: Loss temperature $T$.
            k: Top-k size.
        """
        expected = {
            "teacher fingerprint": (fingerprint, self.fingerprint),
            "number of examples": (num_examples, self.num_examples),
            "vocabulary size": (vocab_size, self.vocab_size),
            "temperature": (temperature, self.temperature),
            "k": (k, self.k),
        }
        problems = [
            f"{name} is {stored!r} in the file but {want!r} now"
            for name, (want, stored) in expected.items()
            if want is not None and not _same(want, stored)
        ]
        if problems:
            raise TopKMismatchError(
                f"top-k file {self.path} does not match: {'; '.join(problems)}. {_REMEDY}"
            )

    def lookup(self, example_indices: Tensor | Sequence[int], labels: Tensor) -> TopKTargets:
        """Dense top-k targets for a batch, placed where its shifted labels are not -100.

        The stored rows of example `e` fill the valid positions of its batch row in order, so any
        padding side or batch width works. The stored labels are compared with the batch's.

        Args:
            example_indices: `[B]` dataset index of each batch row (as given to `precompute_topk`).
            labels: `[B, T]` labels ALREADY shifted (`labels[:, 1:]` of the batch).

        Raises:
            TopKMismatchError: an index out of range, or a row whose response tokens differ from the
                stored ones (other data, order or tokenizer, or unshifted labels).
        """
        rows = torch.as_tensor(example_indices, dtype=torch.long).flatten().cpu()
        if labels.dim() != 2 or labels.shape[0] != rows.numel():
            raise ValueError(
                f"labels must be [batch, seq] with one row per example index; got {tuple(labels.shape)} "
                f"for {rows.numel()} indices"
            )
        if rows.numel() and (rows.min() < 0 or rows.max() >= self.num_examples):
            raise TopKMismatchError(
                f"example index out of range [0, {self.num_examples}) for top-k file {self.path}: "
                f"got {rows.tolist()}. Batches must carry indices into the data set given to precompute_topk."
            )
        valid = labels != IGNORE_INDEX
        spans = [range(int(self.offsets[e]), int(self.offsets[e + 1])) for e in rows]
        for b, (e, span) in enumerate(zip(rows.tolist(), spans, strict=True)):
            stored = self.targets[span.start : span.stop].to(labels.device, torch.long)
            if stored.numel() != int(valid[b].sum()) or not torch.equal(stored, labels[b][valid[b]]):
                raise TopKMismatchError(
                    f"batch row {b} (example {e}) has response tokens {labels[b][valid[b]].tolist()[:12]}… "
                    f"but top-k file {self.path} stores {stored.tolist()[:12]}… for it. Pass the SHIFTED "
                    f"labels (labels[:, 1:]) and the example's index in the data set used by precompute_topk. "
                    + _REMEDY
                )
        take = torch.tensor([i for span in spans for i in span], dtype=torch.long)
        k, device = self.k, labels.device
        indices = torch.arange(k, device=device).expand(*labels.shape, k).clone()
        logprobs = torch.full((*labels.shape, k), -math.log(k), device=device)
        tail = torch.full(labels.shape, -math.inf, device=device)
        indices[valid] = self.indices[take].to(device, torch.long)
        logprobs[valid] = self.logprobs[take].to(device, torch.float32)
        tail[valid] = self.tail_logmass[take].to(device, torch.float32)
        return TopKTargets(indices, logprobs, tail)


def _same(want: object, stored: object) -> bool:
    if isinstance(want, float) or isinstance(stored, float):
        return math.isclose(float(want), float(stored), rel_tol=1e-9)  # type: ignore[arg-type]
    return want == stored


# --- writing the file --------------------------------------------------------------------------------


def _is_rows(data: Iterable[Mapping[str, Tensor]] | Rows) -> bool:
    return isinstance(data, Sequence) and len(data) > 0 and not isinstance(data[0], Mapping)


def _num_batches(data: Iterable[Mapping[str, Tensor]] | Rows, batch_size: int) -> int | None:
    if _is_rows(data):
        return -(-len(data) // batch_size)  # type: ignore[arg-type]
    return len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]


def _batches(
    data: Iterable[Mapping[str, Tensor]] | Rows, batch_size: int, pad_token_id: int
) -> Iterator[tuple[Tensor, Mapping[str, Tensor]]]:
    """`(example_indices [B], batch)` pairs from batch dicts or from rows (numbered in order)."""
    if _is_rows(data):
        assert isinstance(data, Sequence)
        for start in range(0, len(data), batch_size):
            chunk = data[start : start + batch_size]
            batch = collate([(row[0], row[-1]) for row in chunk], pad_token_id)
            if any(len(row) == 3 for row in chunk):  # an explicit attention mask per row
                for i, row in enumerate(chunk):
                    batch["attention_mask"][i, : len(row[0])] = torch.as_tensor(row[1])
            yield torch.arange(start, start + len(chunk)), batch
        return
    seen = 0
    for batch in data:  # type: ignore[union-attr]
        size = batch["input_ids"].shape[0]
        default = torch.arange(seen, seen + size)
        yield torch.as_tensor(batch.get("example_index", default)).flatten().cpu(), batch
        seen += size


@torch.no_grad()
def _topk_rows(
    teacher: PreTrainedModel, batch: Mapping[str, Tensor], k: int, temperature: float, vocab_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Top-k ids, log-probs, tail log-mass and labels at the response positions, and counts per row."""
    device = next(teacher.parameters()).device
    logits = teacher(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).logits[..., :vocab_size]
    logits, labels = next_token_view(logits, batch["labels"].to(device))
    response = labels != IGNORE_INDEX  # row-major order groups the rows by example
    log_p = torch.log_softmax(logits[response].float() / temperature, dim=-1)  # [n, V]
    top_logprobs, top_ids = log_p.topk(k, dim=-1)
    # The tail mass from the full distribution, not 1 - sum(top-k), which cancels badly.
    tail = log_p.scatter(-1, top_ids, -math.inf).logsumexp(-1)
    return top_ids, top_logprobs, tail, labels[response], response.sum(-1)


def precompute_topk(
    teacher: PreTrainedModel,
    data: Iterable[Mapping[str, Tensor]] | Rows,
    *,
    k: int,
    temperature: float,
    path: str | os.PathLike[str],
    fingerprint: str,
    vocab_size: int | None = None,
    batch_size: int = 16,
    pad_token_id: int = 0,
    logprob_dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> Path:
    r"""Run the teacher once over the data and store its top-k log-probs at every response position.

    Args:
        teacher: The frozen causal LM (run under `no_grad` on its own device; its mode is restored).
        data: Either batch dicts with `input_ids`, `attention_mask`, `labels` `[B, T]` (labels
            unshifted, as `training.collate` makes them) and optionally `example_index` `[B]`
            (else examples are numbered in iteration order), or a sequence of rows
            `(input_ids, labels)` / `(input_ids, attention_mask, labels)` numbered by position.
            Every index `0..E-1` must occur exactly once.
        k: Number of tokens kept per position, `1 <= k <= vocab_size`.
        temperature: $T > 0$; the stored values are $\log\mathrm{softmax}(z_t / T)$.
        path: Output file (`.safetensors`); written to a temporary sibling, then renamed.
        fingerprint: The caller's identity string for the teacher (and data), e.g. a hub id with
            revision or a checkpoint hash; `load_topk` compares it.
        vocab_size: The shared tokenizer vocabulary; teacher logits are cut to it (default: the
            teacher's output size).
        batch_size: Rows per forward pass when `data` is rows.
        pad_token_id: Padding id when `data` is rows.
        logprob_dtype: `torch.float32` (default) or `torch.float16` for the log-probs.
        progress: Show a progress bar.

    Returns:
        The path written.

    Raises:
        ValueError: bad `k`, `temperature` or dtype, no examples, or missing/duplicate indices.
    """
    vocab_size = vocab_size or teacher.get_output_embeddings().weight.shape[0]
    if not 1 <= k <= vocab_size:
        raise ValueError(f"k must be in [1, vocab_size={vocab_size}], got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logprob_dtype not in (torch.float32, torch.float16):
        raise ValueError(f"logprob_dtype must be torch.float32 or torch.float16, got {logprob_dtype}")
    per_example: dict[int, tuple[Tensor, ...]] = {}
    was_training = teacher.training
    teacher.eval()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    try:
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("Teacher top-k log-probs", total=_num_batches(data, batch_size))
            for example_indices, batch in _batches(data, batch_size, pad_token_id):
                *stored, counts = _topk_rows(teacher, batch, k, temperature, vocab_size)
                # Split the batch's response rows back into one piece per example.
                pieces = zip(*(t.cpu().split(counts.tolist()) for t in stored), strict=True)
                for e, piece in zip(example_indices.tolist(), pieces, strict=True):
                    if e in per_example:
                        raise ValueError(f"example index {e} occurs twice in the data")
                    per_example[e] = piece
                bar.advance(task)
    finally:
        teacher.train(was_training)
    if not per_example:
        raise ValueError("no examples in the data: nothing to precompute")
    missing = sorted(set(range(len(per_example))) - per_example.keys())
    if missing:
        raise ValueError(f"example indices must be 0..E-1 without gaps; missing {missing[:10]}")
    ordered = [per_example[e] for e in range(len(per_example))]
    counts = torch.tensor([0] + [len(piece[0]) for piece in ordered])
    tensors = {
        "indices": torch.cat([p[0] for p in ordered]).to(torch.int32),
        "logprobs": torch.cat([p[1] for p in ordered]).to(logprob_dtype),
        "tail_logmass": torch.cat([p[2] for p in ordered]).to(torch.float32),
        "targets": torch.cat([p[3] for p in ordered]).to(torch.int32),
        "offsets": counts.cumsum(0).to(torch.int64),
    }
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "k": str(k),
        "temperature": repr(float(temperature)),
        "teacher_fingerprint": fingerprint,
        "vocab_size": str(vocab_size),
        "num_examples": str(len(ordered)),
        "num_tokens": str(int(counts.sum())),
    }
    return _write_atomically(Path(path), tensors, metadata)


def _write_atomically(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    with staged(path) as staging:
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(staging), metadata=metadata)
    return path


# --- reading the file ---------------------------------------------------------------------------------


def load_topk(
    path: str | os.PathLike[str],
    *,
    fingerprint: str | None = None,
    num_examples: int | None = None,
    vocab_size: int | None = None,
    temperature: float | None = None,
    k: int | None = None,
) -> TopKTeacherSignals:
    """Read and validate a file written by `precompute_topk`; check it against the current run.

    Args:
        path: The `.safetensors` file.
        fingerprint: The current teacher's fingerprint (as given to `precompute_topk`).
        num_examples: The number of examples in the current data set.
        vocab_size: The shared vocabulary size of the current models.
        temperature: The $T$ the loss will use.
        k: The expected top-k size.

    Raises:
        TopKFileError: missing, unreadable, truncated or inconsistent file, or another format.
        TopKMismatchError: valid file made for another teacher, data, vocabulary, T or k.
    """
    path = Path(path)
    if not path.is_file():
        raise TopKFileError(f"no top-k file at {path}: create it with precompute_topk(teacher, data, ...)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types for truncated or foreign files
        raise TopKFileError(
            f"{path} is not a readable safetensors file ({error}); it is truncated or corrupted. "
            "Delete it and run precompute_topk again."
        ) from error
    signals = _from_contents(path, metadata, tensors)
    signals.check(
        fingerprint=fingerprint,
        num_examples=num_examples,
        vocab_size=vocab_size,
        temperature=temperature,
        k=k,
    )
    return signals


def _from_contents(
    path: Path, metadata: Mapping[str, str], tensors: Mapping[str, Tensor]
) -> TopKTeacherSignals:
    def broken(what: str) -> TopKFileError:
        return TopKFileError(f"{path}: {what}. Delete it and run precompute_topk again.")

    if metadata.get("format") != FORMAT_NAME:
        raise broken(f"not a kdatlas top-k file (metadata format={metadata.get('format')!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise broken(f"format version {metadata.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    needed = ("indices", "logprobs", "tail_logmass", "targets", "offsets")
    if any(name not in tensors for name in needed):
        raise broken(f"tensors {sorted(tensors)} lack one of {list(needed)}")
    try:
        k, vocab, temperature = (
            int(metadata["k"]),
            int(metadata["vocab_size"]),
            float(metadata["temperature"]),
        )
        counts = int(metadata["num_examples"]), int(metadata["num_tokens"])
    except (KeyError, ValueError) as error:
        raise broken(f"bad metadata {dict(metadata)}") from error
    indices, offsets = tensors["indices"], tensors["offsets"]
    n = indices.shape[0] if indices.dim() == 2 else -1
    consistent = (
        indices.shape == (counts[1], k)
        and tensors["logprobs"].shape == (n, k)
        and tensors["tail_logmass"].shape == tensors["targets"].shape == (n,)
        and offsets.shape == (counts[0] + 1,)
        and int(offsets[0]) == 0
        and int(offsets[-1]) == n
        and bool((offsets.diff() >= 0).all())
        and (n == 0 or 0 <= int(indices.min()) <= int(indices.max()) < vocab)
    )
    if not consistent:
        raise broken("tensor shapes, offsets or token ids are inconsistent with the metadata")
    return TopKTeacherSignals(
        indices=indices,
        logprobs=tensors["logprobs"],
        tail_logmass=tensors["tail_logmass"],
        targets=tensors["targets"],
        offsets=offsets,
        k=k,
        temperature=temperature,
        fingerprint=metadata.get("teacher_fingerprint", ""),
        vocab_size=vocab,
        path=str(path),
    )


def topk_kwargs(targets: TopKTargets) -> dict[str, Any]:
    """`topk_divergence` keyword arguments from a lookup: `topk_divergence(logits, **topk_kwargs(t), labels=...)`."""
    return {
        "topk_indices": targets.indices,
        "topk_logprobs": targets.logprobs,
        "teacher_tail_logmass": targets.tail_logmass,
    }
