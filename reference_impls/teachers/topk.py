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

## What top-k truncation changes

Let $S$ be the stored top-k set at one position, $P$ the teacher and $Q$ the student (both at
temperature $T$, normalised over the full vocabulary), $m = \sum_{v \in S} P_v$ the teacher's kept
mass and $r = \sum_{v \in S} Q_v$ the student's mass on $S$. The full forward KL needs $P_v$ outside
$S$, which is gone; `topk_divergence` offers three ways to handle the missing tail mass $1 - m$:

- `"zero"`: $\sum_{v \in S} P_v \log(P_v / Q_v)$ with the stored (unnormalised) $P_v$, i.e. the
  teacher's tail is treated as absent. Equal to $m\,L_\text{renormalize} + m \log m$: the same
  minimiser as `"renormalize"` and the gradient scaled by $m$; the value can be negative (it is
  $\ge m \log(m/r)$). Used by verl's `forward_kl_topk` and EasyDistill's old `kd/` `forward_kld`.
- `"renormalize"`: the teacher is renormalised over $S$, $\tilde P_v = P_v / m$, and
  $\mathrm{KL}(\tilde P \| Q) = \sum_{v \in S} \tilde P_v \log(\tilde P_v / Q_v)$ with the student
  normalised over the full vocabulary. It is a true KL, $\ge 0$, minimised at $Q = \tilde P$:
  the student is pushed to put **zero** mass outside $S$ (over-confident on the head). Neither
  bound of the full KL. DistillKit's `MissingProbabilityHandling.ZERO` is this (its
  `get_target_logprobs` renormalises the top-k). TRL `server_distillation` without
  `loss_add_tail` renormalises the student over $S$ too, giving
  $\mathrm{KL}(\tilde P \| Q|_S) = L_\text{renormalize} + \log r$, which ignores the student's tail.
- `"residual"` (default): one extra bucket holds the mass outside $S$ for both models,
  $\sum_{v \in S} P_v \log(P_v / Q_v) + (1-m)\log\frac{1-m}{1-r}$. This is the exact KL between the
  two distributions coarse-grained to $k + 1$ outcomes, so by the data-processing inequality it is
  $\le \mathrm{KL}(P \| Q)$; the chain rule gives the gap exactly,
  $\mathrm{KL}(P\|Q) = L_\text{residual} + (1-m)\,\mathrm{KL}(P(\cdot|\bar S) \| Q(\cdot|\bar S))$:
  it matches the head and the tail's total mass, and leaves the tail's *shape* free. DistillKit's
  `SYMMETRIC_UNIFORM`, TRL `server_distillation` with `loss_add_tail=True` (its default) and verl's
  SDPO `tail="add"` do this. Unlike them, the student's tail $\log(1 - r)$ is a log-sum-exp over the
  logits outside $S$ (no cancellation when $r \to 1$, exact gradient), and the teacher's tail is the
  stored `tail_logmass` rather than $1 - \sum \exp(\text{stored})$, which fp16 rounding would bias.

When $k = V$ the three coincide and equal `reference_impls.losses.forward_kl` ($m = 1$, the tail is
empty). Reverse KL $\mathrm{KL}(Q \| P)$ is only defined with `"residual"` (the coarse-grained
$\mathrm{KL}(Q \circ \pi \| P \circ \pi) \le \mathrm{KL}(Q \| P)$, gap
$(1-r)\,\mathrm{KL}(Q(\cdot|\bar S) \| P(\cdot|\bar S))$): with the other two the teacher puts
zero mass outside $S$, and $\mathrm{KL}(Q\|P) = \infty$ whenever the student does not (EasyDistill
clamps $P$ at $10^{-10}$ instead, a large arbitrary penalty).

**Temperature.** The stored log-probs are $\log\mathrm{softmax}(z_t / T)$ at the $T$ given to
`precompute_topk`; train with the same $T$ (`load_topk(..., temperature=T)` checks it). Changing
$T$ afterwards is not exact from a top-k (DistillKit re-tempers with $P_v^{\alpha}$ and treats the
tail as one token), so it is refused here: precompute again. The top-k *set* itself does not
depend on $T$. **Storage**: float16 log-probs halve the file; each stored probability then carries
a relative error up to $|\log P_v| \cdot 2^{-11}$ (1 % at $P_v = e^{-20}$); float32 is the default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformers import PreTrainedModel

from reference_impls.core.cache import staged
from reference_impls.core.training import collate, next_token_view
from reference_impls.losses.numerics import IGNORE_INDEX, Reduction, finite_log_softmax, reduce_positions

FORMAT_NAME = "kdatlas-topk"
FORMAT_VERSION = 1
Tail = Literal["zero", "renormalize", "residual"]
TopKDivergence = Literal["forward_kl", "reverse_kl"]
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


# --- the loss ---------------------------------------------------------------------------------------------


def _kl_terms(log_a: Tensor, log_b: Tensor) -> Tensor:
    r"""Elementwise $a \log(a/b)$ from log-probabilities."""
    return log_a.exp() * (log_a - log_b)


def _teacher_tail(topk_logprobs: Tensor) -> Tensor:
    r"""$\log(1 - \sum_k P_k)$ from the stored values alone (0 mass when they already sum to >= 1)."""
    kept = topk_logprobs.logsumexp(-1).clamp(max=0.0)
    return torch.log(-torch.expm1(kept))


def topk_divergence(
    student_logits: Tensor,
    topk_indices: Tensor,
    topk_logprobs: Tensor,
    labels: Tensor | None = None,
    *,
    divergence: TopKDivergence = "forward_kl",
    tail: Tail = "residual",
    temperature: float = 1.0,
    teacher_tail_logmass: Tensor | None = None,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    r"""KL between a stored teacher top-k and the student, with the teacher's tail handled by `tail`.

    With $S$ the top-k ids, $m = \sum_S P_v$, $r = \sum_S Q_v$ and $Q = \mathrm{softmax}(z_s/T)$:

    - `"zero"`: $\sum_{v \in S} P_v \log(P_v/Q_v)$;
    - `"renormalize"`: $\sum_{v \in S} \tilde P_v \log(\tilde P_v/Q_v)$, $\tilde P_v = P_v/m$;
    - `"residual"`: $\sum_{v \in S} P_v \log(P_v/Q_v) + (1-m)\log\frac{1-m}{1-r}$ (forward) or
      $\sum_{v \in S} Q_v \log(Q_v/P_v) + (1-r)\log\frac{1-r}{1-m}$ (reverse, `"residual"` only).

    All three equal `losses.forward_kl` when $k = V$; see the module docstring for their biases.
    Conventions as in `reference_impls.losses` (aligned labels, -100 ignored, per-token mean, fp32,
    teacher detached, opt-in $T^2$, ±inf entries masked).

    Args:
        student_logits: `[..., V]` student logits (gradients flow here).
        topk_indices: `[..., k]` teacher top-k token ids.
        topk_logprobs: `[..., k]` teacher log-probs at $T$ (normalised over the full vocabulary).
        labels: `[...]` labels ALREADY aligned with the logits; -100 ignored; None counts all.
        divergence: `"forward_kl"` ($\mathrm{KL}(P\|Q)$) or `"reverse_kl"` ($\mathrm{KL}(Q\|P)$).
        tail: `"zero"`, `"renormalize"` or `"residual"`.
        temperature: $T > 0$ applied to the student; must be the $T$ the top-k was stored at.
        teacher_tail_logmass: `[...]` stored $\log(1-m)$; if None it is derived from `topk_logprobs`
            (less exact after fp16 storage). Only `"residual"` uses it.
        scale_by_t2: multiply by $T^2$ (opt-in).
        reduction: `"mean"`, `"sum"` or `"none"`.
        num_items_in_batch: if given, the sum is divided by it instead of the valid-token count.

    Raises:
        ValueError: bad shapes, $T \le 0$, unknown `divergence`/`tail`, reverse KL without
            `"residual"`, or a token id outside the student's vocabulary.
    """
    if divergence not in ("forward_kl", "reverse_kl"):
        raise ValueError(f"divergence must be 'forward_kl' or 'reverse_kl', got {divergence!r}")
    if tail not in ("zero", "renormalize", "residual"):
        raise ValueError(f"tail must be 'zero', 'renormalize' or 'residual', got {tail!r}")
    if divergence == "reverse_kl" and tail != "residual":
        raise ValueError(
            f"reverse KL with tail={tail!r} is infinite whenever the student puts mass outside the teacher's "
            "top-k (the teacher has none there); use tail='residual' (exact KL over top-k + one tail bucket)"
        )
    _check_shapes(student_logits, topk_indices, topk_logprobs, labels, teacher_tail_logmass)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_q_full = finite_log_softmax(student_logits.to(dtype) / temperature)
    log_q = log_q_full.gather(-1, topk_indices.long())
    log_p = topk_logprobs.detach().to(dtype)
    if tail == "renormalize":
        log_p = log_p - log_p.logsumexp(-1, keepdim=True)
    # A token with -inf on either side contributes 0 (the losses.py convention).
    keep = torch.isfinite(log_p) & (log_q > torch.finfo(dtype).min / 2)
    log_p, log_q = torch.where(keep, log_p, 0.0), torch.where(keep, log_q, 0.0)
    forward = divergence == "forward_kl"
    terms = _kl_terms(log_p, log_q) if forward else _kl_terms(log_q, log_p)
    per_position = torch.where(keep, terms, 0.0).sum(-1)

    if tail == "residual":
        if teacher_tail_logmass is None:
            teacher_tail_logmass = _teacher_tail(topk_logprobs.detach().to(dtype))
        log_p_tail = teacher_tail_logmass.detach().to(dtype)
        # The student's mass outside S straight from its logits: stable as r -> 1, exact gradient.
        outside = log_q_full.scatter(-1, topk_indices.long(), torch.finfo(dtype).min)
        log_q_tail = outside.logsumexp(-1)
        has_tail = torch.isfinite(log_p_tail) & (log_q_tail > torch.finfo(dtype).min / 2)
        log_p_tail = torch.where(has_tail, log_p_tail, 0.0)
        log_q_tail = torch.where(has_tail, log_q_tail, 0.0)
        tail_term = _kl_terms(log_p_tail, log_q_tail) if forward else _kl_terms(log_q_tail, log_p_tail)
        per_position = per_position + torch.where(has_tail, tail_term, 0.0)

    if scale_by_t2:
        per_position = per_position * temperature**2
    return reduce_positions(per_position, labels, reduction, num_items_in_batch)


def _check_shapes(
    student_logits: Tensor,
    topk_indices: Tensor,
    topk_logprobs: Tensor,
    labels: Tensor | None,
    teacher_tail_logmass: Tensor | None,
) -> None:
    positions = tuple(student_logits.shape[:-1])
    if topk_indices.shape != topk_logprobs.shape or tuple(topk_indices.shape[:-1]) != positions:
        raise ValueError(
            f"topk_indices {tuple(topk_indices.shape)} and topk_logprobs {tuple(topk_logprobs.shape)} must "
            f"both be {positions} + (k,), aligned with the student logits {tuple(student_logits.shape)} "
            "(look them up with the shifted labels, labels[:, 1:])"
        )
    for name, tensor in (("labels", labels), ("teacher_tail_logmass", teacher_tail_logmass)):
        if tensor is not None and tuple(tensor.shape) != positions:
            raise ValueError(
                f"{name} shape {tuple(tensor.shape)} must be {positions} (shift before calling: "
                "logits[:, :-1] with labels[:, 1:])"
            )
    if topk_indices.numel() and int(topk_indices.max()) >= student_logits.shape[-1]:
        raise ValueError(
            f"teacher top-k token id {int(topk_indices.max())} is outside the student's vocabulary of "
            f"{student_logits.shape[-1]}: the top-k was stored for a larger vocabulary. Use a student with "
            "the teacher's tokenizer (or a cross-tokenizer method: `uld`, `dskd`)."
        )


def topk_kwargs(targets: TopKTargets) -> dict[str, Any]:
    """`topk_divergence` keyword arguments from a lookup: `topk_divergence(logits, **topk_kwargs(t), labels=...)`."""
    return {
        "topk_indices": targets.indices,
        "topk_logprobs": targets.logprobs,
        "teacher_tail_logmass": targets.tail_logmass,
    }
