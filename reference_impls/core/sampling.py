"""Sampling continuations during training: the on-policy half of the data-source axis.

On-policy methods (GKD, MiniLLM, DistiLLM's student-generated outputs) train on sequences the
*current* student writes, so the loop samples a fresh continuation of each prompt of the batch at
every such step. `sample_continuations` is a small incremental decoder with a KV cache:

* prompts are left-padded and given explicit position ids, so every row continues from its own
  last prompt token (HF's default positions ignore left padding);
* a row stops at its first EOS (kept, so the student learns to stop) or at ``max_new_tokens``;
  later steps feed it padding that the attention mask hides;
* MiniLLM's *teacher-mixed sampling* draws each token from ``(1 - α)·q + α·p`` (student ``q``,
  teacher ``p``, both at the sampling temperature); ``α = 0`` is plain student sampling and
  ``α = 1`` sampling from the teacher (GKD's ``seq_kd``).

`rollout_batch` turns a training batch into the same prompts with sampled responses, in the
training layout (``[bos] prompt response``, labels -100 on the prompt), so any objective applies
unchanged.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel

from reference_impls.core.generation import _left_pad
from reference_impls.core.training import collate
from reference_impls.losses.numerics import check_in_range, check_unit_interval


def prompt_ids(batch: dict[str, Tensor]) -> list[list[int]]:
    """The prompt part (``[bos] prompt``) of each row of a training batch.

    The prompt is everything before the first position whose label is not -100; a row without
    any label (an empty response was impossible to build, but a truncated one may be) keeps its
    whole unpadded length.
    """
    rows = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        length = int(mask.sum())
        valid = (labels[:length] != -100).nonzero()
        rows.append(ids[: int(valid[0]) if len(valid) else length].tolist())
    return rows


@functools.cache
def _cache_argument(model_class: type) -> str:
    """The KV-cache keyword of a model class's forward (looked up once per class)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _forward_cached(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, positions: Tensor, cache: object
) -> tuple[object, object]:
    """One incremental forward pass; transformers ≥ 5.2x names the KV-cache argument ``cache``
    (``past_key_values`` before), so use whichever the model's forward accepts."""
    name = _cache_argument(type(model))
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **{name: cache},
    )
    new_cache = getattr(out, "cache", None)
    return out, new_cache if new_cache is not None else out.past_key_values


def _next_token_probs(logits: Tensor, temperature: float) -> Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1)


@torch.no_grad()
def sample_continuations(
    model: PreTrainedModel,
    prompts: Sequence[list[int]],
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    mix_model: PreTrainedModel | None = None,
    mix_alpha: float = 0.0,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
    top_p: float = 1.0,
    row_generators: Sequence[torch.Generator] | None = None,
) -> list[list[int]]:
    """Sample one continuation per prompt (token ids, EOS included when produced).

    Args:
        model: The sampling policy (the student); its train/eval mode is restored afterwards.
        prompts: Token ids of each prompt (``[bos] prompt``), unpadded.
        eos_id: End-of-sequence id: a row stops after producing it.
        pad_id: Id fed to finished rows and used for left padding (masked out).
        max_new_tokens: Upper bound on sampled tokens per row (EOS included).
        temperature: Softmax temperature of both models when sampling (> 0).
        greedy: Take the most probable token of the (mixed) distribution instead of sampling.
        mix_model: The teacher for teacher-mixed sampling; ``None`` samples from ``model`` only.
        mix_alpha: Weight of ``mix_model`` in the per-token mixture, in [0, 1].
        generator: Random generator (on the model's device) for reproducible sampling.
        vocab_size: Cut both models' logits to this many entries (shared tokenizer, padded heads).
        top_p: Nucleus sampling: draw from the smallest set of tokens whose probability reaches
            ``top_p`` (1 keeps every token).
        row_generators: One generator per prompt (on the model's device): each row's samples then
            depend only on its own generator, not on which other prompts share the batch (a
            black-box teacher's seeded requests stay reproducible when batched differently).

    Returns:
        The continuations, cut after the first EOS; ``[eos_id]`` when EOS came first.

    Raises:
        ValueError: On an empty prompt, a temperature ≤ 0, or an α outside [0, 1] or without a
            ``mix_model``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_unit_interval("mix_alpha", mix_alpha)
    if mix_alpha > 0 and mix_model is None:
        raise ValueError("mix_alpha > 0 needs a mix_model (the teacher) to mix with")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (the BOS token)")
    check_in_range("top_p", top_p, 0.0, 1.0, open_low=True)
    if row_generators is not None and len(row_generators) != len(prompts):
        raise ValueError(f"{len(row_generators)} row generators for {len(prompts)} prompts")
    if not prompts or max_new_tokens <= 0:
        return [[] for _ in prompts]
    models = [model] + ([mix_model] if mix_model is not None and mix_alpha > 0 else [])
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    device = next(model.parameters()).device
    input_ids, attention_mask = (t.to(device) for t in _left_pad(list(prompts), pad_id))
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    caches: list[object] = [None] * len(models)
    step_ids, step_positions = input_ids, positions
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    sampled: list[Tensor] = []
    for _ in range(max_new_tokens):
        probabilities = []
        for index, m in enumerate(models):
            out, caches[index] = _forward_cached(m, step_ids, attention_mask, step_positions, caches[index])
            logits = out.logits[:, -1]
            probabilities.append(
                _next_token_probs(logits[:, :vocab_size] if vocab_size else logits, temperature)
            )
        probs = probabilities[0] if len(probabilities) == 1 else (1 - mix_alpha) * probabilities[0]
        if len(probabilities) == 2:
            probs = probs + mix_alpha * probabilities[1]
        if greedy:
            token = probs.argmax(dim=-1)
        else:
            if top_p < 1.0:
                probs = nucleus(probs, top_p)
            if row_generators is not None:
                token = torch.cat(
                    [
                        torch.multinomial(row, 1, generator=g)
                        for row, g in zip(probs, row_generators, strict=True)
                    ]
                )
            else:
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        sampled.append(token)
        finished |= token == eos_id
        if bool(finished.all()):
            break
        # Finished rows keep feeding padding, hidden from attention by a 0 in the mask.
        attention_mask = torch.cat([attention_mask, (~finished).long().unsqueeze(-1)], dim=-1)
        step_positions = step_positions[:, -1:] + 1
        step_ids = token.unsqueeze(-1)
    for m, mode in zip(models, modes, strict=True):
        m.train(mode)
    continuations = []
    for row in torch.stack(sampled, dim=1).tolist():
        continuations.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return continuations


def nucleus(probs: Tensor, top_p: float) -> Tensor:
    """``probs`` [rows, vocab] restricted to each row's nucleus (the most probable tokens whose
    mass first reaches ``top_p``; the most probable token is always kept), renormalised."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # A token is dropped when the mass of the tokens before it already reaches top_p.
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


def rollout_batch(
    model: PreTrainedModel,
    batch: dict[str, Tensor],
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    mix_model: PreTrainedModel | None = None,
    mix_alpha: float = 0.0,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
) -> dict[str, Tensor]:
    """The batch's prompts with sampled responses, in the training layout (on the batch's device).

    A row whose sample is empty (``max_new_tokens`` reached without a token) keeps no label; the
    losses' masked mean gives it no weight.
    """
    prompts = prompt_ids(batch)
    continuations = sample_continuations(
        model,
        prompts,
        eos_id=eos_id,
        pad_id=pad_id,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        mix_model=mix_model,
        mix_alpha=mix_alpha,
        generator=generator,
        vocab_size=vocab_size,
    )
    rows = [(p + c, [-100] * len(p) + c) for p, c in zip(prompts, continuations, strict=True)]
    device = batch["input_ids"].device
    return {key: value.to(device) for key, value in collate(rows, pad_id).items()}


@dataclass
class ModelSampler:
    """The `Sampler` the training loop hands to a dynamic data source.

    Attributes:
        student: The student being trained (the unwrapped model: sampling needs no gradient sync).
        teacher: The teacher, for teacher samples (GKD's ``seq_kd``) and teacher-mixed sampling.
        eos_id: End-of-sequence id.
        pad_id: Padding id.
        max_new_tokens: Length limit of sampled responses.
        temperature: Sampling temperature.
        teacher_mix: MiniLLM's α: student samples are drawn from ``(1 − α)·q + α·p``.
        seed: Seed of the sampling generator.
        vocab_size: Shared vocabulary size when the heads are padded differently.
    """

    student: PreTrainedModel
    teacher: PreTrainedModel | None
    eos_id: int
    pad_id: int
    max_new_tokens: int
    temperature: float = 1.0
    teacher_mix: float = 0.0
    seed: int = 0
    vocab_size: int | None = None
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        device = next(self.student.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(self.seed)

    def _rollout(self, model: PreTrainedModel, batch: dict[str, Tensor], mix: float) -> dict[str, Tensor]:
        return rollout_batch(
            model,
            batch,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            mix_model=self.teacher if mix > 0 else None,
            mix_alpha=mix,
            generator=self.generator,
            vocab_size=self.vocab_size,
        )

    def state_dict(self) -> dict[str, Tensor]:
        """The sampling generator's state, for checkpoints."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def from_student(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch's prompts with responses sampled from the student (teacher-mixed if α > 0)."""
        return self._rollout(self.student, batch, self.teacher_mix)

    def from_teacher(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch's prompts with responses sampled from the teacher."""
        if self.teacher is None:
            raise ValueError("teacher samples were asked for, but the sampler has no teacher")
        return self._rollout(self.teacher, batch, 0.0)
