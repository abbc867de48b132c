"""Teacher access through text only: the interface every black-box method talks to.

In black-box distillation the student never sees the teacher's weights or logits, only what it
writes (and, where an API offers them, the top-k log-probabilities of the tokens it wrote). This
module is that boundary:

* `GenerationRequest` / `Completion`: one prompt (plain text or chat messages) with its sampling
  parameters in, the text out with its finish reason, token counts and optional top-k log-probs.
  Both convert to and from plain JSON (`to_dict` / `from_dict`) so a cache can store them.
* `TextTeacher`: the abstract teacher. `generate` returns completions in request order;
  `iter_generate` yields them as they finish (a cache persists each one at once, so an
  interrupted run loses only the requests in flight). `identity` is a stable string naming the
  backend, model and weights, used in cache keys; it never contains a secret.
* `LocalTeacher`: any transformers causal LM (the embedded tiny teacher, a local folder or a
  hub id) generating with HF ``generate``.
* `OpenAICompatibleTeacher` (`reference_impls.teachers.http`): any server speaking the OpenAI HTTP format (OpenAI, vLLM, TGI, llama.cpp, ``kdatlas serve-teacher``),
  standard library only.

Conventions shared by both backends, following the OpenAI API:

* ``temperature == 0`` is greedy decoding; ``n`` completions per request are returned next to
  each other (``Completion.index`` is the sample's position), so ``generate`` returns
  ``sum(r.n for r in requests)`` completions.
* ``finish_reason`` is ``"stop"`` (end-of-sequence or a stop string) or ``"length"``
  (``max_new_tokens`` reached); stop strings are cut from the text.
* ``completion_tokens`` counts the generated tokens including the one that ended the
  completion (EOS), as servers bill them.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reference_impls.core.generation import _left_pad
from reference_impls.core.sampling import sample_continuations
from reference_impls.core.tokenizer import encode_prompt, pad_id
from reference_impls.tasks.instructions import TURN_SEPARATOR
from reference_impls.teachers.embedded import TeacherRecipe, load_or_train_teacher, teacher_dir
from reference_impls.teachers.messages import ChatMessage, Completion, GenerationRequest, TokenLogprob

# The request/result types are re-exported: `from reference_impls.teachers.text import
# GenerationRequest` keeps working for code written before they moved to `requests`.
__all__ = [
    "ChatMessage",
    "Completion",
    "GenerationRequest",
    "LocalTeacher",
    "TextTeacher",
    "TokenLogprob",
    "plain_chat_prompt",
]


logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ the interface


class TextTeacher(abc.ABC):
    """A teacher seen only through the text it writes."""

    @abc.abstractmethod
    def identity(self) -> str:
        """A stable name of the backend, model and weights/revision, for cache keys (never a secret)."""

    @abc.abstractmethod
    def iter_generate(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, list[Completion]]]:
        """Yield ``(request index, its n completions)`` as each request finishes, in any order."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """All completions, in request order (a request's ``n`` samples next to each other)."""
        by_request: dict[int, list[Completion]] = dict(self.iter_generate(requests))
        return [c for i in range(len(requests)) for c in by_request[i]]


# ------------------------------------------------------------------------------ local models


class LocalTeacher(TextTeacher):
    """A transformers causal LM used as a text-only teacher.

    Plain prompts are encoded as ``[bos] prompt`` (the suite's training convention, as in
    `generate_responses`, whose greedy output this reproduces exactly). Chat prompts go through
    the tokenizer's chat template; a tokenizer without one (the embedded teacher) gets the
    suite's plain conversation format (`plain_chat_prompt`): a lone user message is its content.

    Greedy requests are decoded together in batches, and so are sampled ones: every sample gets
    its own random generator (sample ``k`` of a request seeded ``seed + k``), so its output does
    not depend on which other requests share the call (a cache that resumes a run gets the same
    samples). Requests asking for log-probs are decoded one at a time with HF ``generate``. Log-probs are those of the model's own
    distribution (before temperature and top-p). Calls are serialised by a lock, so one
    instance may serve several threads (``kdatlas serve-teacher``).

    Args:
        model: Any causal LM.
        tokenizer: Its tokenizer.
        label: Name used in `identity` (default: the model's ``name_or_path`` and commit).
        batch_size: Greedy prompts decoded together.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        label: str | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._label = label
        self._fingerprint: str | None = None
        self._lock = threading.Lock()
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self._eos_ids = sorted(i for i in eos_ids if i is not None)
        if not self._eos_ids:
            raise ValueError("the tokenizer and model define no eos token; set tokenizer.eos_token first")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 64,
    ) -> LocalTeacher:
        """Load a local folder or hub id (remote code only when ``trust_remote_code``)."""
        tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code
        )
        label = f"{name_or_path}@{revision}" if revision else None
        return cls(model.to(device).eval(), tokenizer, label=label, batch_size=batch_size)

    @classmethod
    def embedded(
        cls,
        device: str | torch.device = "cpu",
        progress: bool = True,
        *,
        recipe: TeacherRecipe = TeacherRecipe(),
    ) -> LocalTeacher:
        """The embedded tiny teacher (shipped; a recipe the package does not ship is trained on first use), as a text-only teacher."""
        model, tokenizer = load_or_train_teacher(device, progress, recipe=recipe)
        return cls(model, tokenizer, label=f"embedded/{teacher_dir(recipe).name}")

    def __repr__(self) -> str:
        return f"LocalTeacher({self.identity()!r})"

    def identity(self) -> str:
        """``local:<label>#<weights fingerprint>``; the fingerprint changes when the weights do."""
        if self._fingerprint is None:
            self._fingerprint = _weights_fingerprint(self.model, self.tokenizer)
        label = self._label
        if label is None:
            name = self.model.config.name_or_path or type(self.model).__name__
            commit = getattr(self.model.config, "_commit_hash", None)
            label = f"{name}@{commit}" if commit else name
        return f"local:{label}#{self._fingerprint}"

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids the model is conditioned on for ``request``."""
        if isinstance(request.prompt, str):
            return encode_prompt(self.tokenizer, request.prompt)
        messages = [asdict(m) for m in request.prompt]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            # The template writes its own BOS text, so no special tokens are added again.
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return encode_prompt(self.tokenizer, plain_chat_prompt(messages))

    def iter_generate(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, list[Completion]]]:
        """Greedy requests in batches, then sampled ones in batches (one generator per sample,
        seeded ``seed + k`` for sample ``k``), then those asking for log-probs one by one."""
        greedy = [i for i, r in enumerate(requests) if r.temperature == 0]
        batched = [i for i, r in enumerate(requests) if r.temperature > 0 and self._can_batch_sample(r)]
        single = [i for i, r in enumerate(requests) if r.temperature > 0 and not self._can_batch_sample(r)]
        for start in range(0, len(greedy), self.batch_size):
            chunk = greedy[start : start + self.batch_size]
            with self._lock:
                rows = self._decode([requests[i] for i in chunk], num_return_sequences=1)
            for i, row in zip(chunk, rows, strict=True):
                # Greedy decoding is deterministic: the n samples are one decode repeated.
                yield i, [_with_index(row[0], k) for k in range(requests[i].n)]
        # Requests that sample with the same temperature and top-p share batches.
        groups: dict[tuple[float, float], list[int]] = {}
        for i in batched:
            groups.setdefault((requests[i].temperature, requests[i].top_p), []).append(i)
        for indices in groups.values():
            chunk: list[int] = []
            for i in indices:
                chunk.append(i)
                if sum(requests[j].n for j in chunk) >= self.batch_size or i == indices[-1]:
                    with self._lock:
                        rows = self._sample([requests[j] for j in chunk])
                    yield from zip(chunk, rows, strict=True)
                    chunk = []
        for i in single:
            request = requests[i]
            with self._lock, torch.random.fork_rng(devices=self._rng_devices()):
                if request.seed is not None:
                    torch.manual_seed(request.seed)
                (row,) = self._decode([request], num_return_sequences=request.n)
            yield i, row

    def _can_batch_sample(self, request: GenerationRequest) -> bool:
        # The batched sampler returns no log-probs and stops at a single EOS id.
        return request.logprobs is None and len(self._eos_ids) == 1

    @torch.no_grad()
    def _sample(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """Sample ``n`` completions of each request in one batch, each row from its own generator."""
        device = next(self.model.parameters()).device
        prompts, generators = [], []
        for request in requests:
            ids = self.prompt_ids(request)
            for k in range(request.n):
                seed = (
                    request.seed + k if request.seed is not None else random.SystemRandom().randrange(2**63)
                )
                prompts.append(ids)
                generators.append(torch.Generator(device=device).manual_seed(seed))
        first = requests[0]
        rows = sample_continuations(
            self.model,
            prompts,
            eos_id=self._eos_ids[0],
            pad_id=pad_id(self.tokenizer),
            max_new_tokens=max(r.max_new_tokens for r in requests),
            temperature=first.temperature,
            top_p=first.top_p,
            row_generators=generators,
        )
        results, position = [], 0
        for request in requests:
            samples = []
            for k in range(request.n):
                samples.append(self._finish(request, len(prompts[position]), rows[position], None, k))
                position += 1
            results.append(samples)
        return results

    def _rng_devices(self) -> list[torch.device]:
        device = next(self.model.parameters()).device
        return [device] if device.type == "cuda" else []

    @torch.no_grad()
    def _decode(
        self, requests: Sequence[GenerationRequest], num_return_sequences: int
    ) -> list[list[Completion]]:
        """Decode ``requests`` in one left-padded batch; all are greedy or there is only one."""
        prompts = [self.prompt_ids(r) for r in requests]
        input_ids, attention_mask = _left_pad(prompts, pad_id(self.tokenizer))
        device = next(self.model.parameters()).device
        first = requests[0]
        sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if first.temperature > 0:
            # top_k=0 switches off any top-k default a hub generation config sets: requests say
            # nothing about top-k, so none is applied.
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p, "top_k": 0}
        want_logprobs = any(r.logprobs is not None for r in requests)
        was_training = self.model.training
        self.model.eval()
        try:
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max(r.max_new_tokens for r in requests),
                num_return_sequences=num_return_sequences,
                eos_token_id=self._eos_ids,
                pad_token_id=pad_id(self.tokenizer),
                return_dict_in_generate=True,
                output_logits=want_logprobs,
                **sampling,
            )
        finally:
            self.model.train(was_training)
        generated = output.sequences[:, input_ids.shape[1] :].tolist()
        step_logprobs = None
        if want_logprobs:
            # [rows, steps, vocab]: the model's raw next-token distribution at each step.
            step_logprobs = torch.stack(output.logits, dim=1).float().log_softmax(-1).cpu()
        results: list[list[Completion]] = []
        for r, request in enumerate(requests):
            samples = []
            for k in range(num_return_sequences):
                row = r * num_return_sequences + k
                row_logprobs = (
                    step_logprobs[row] if step_logprobs is not None and request.logprobs is not None else None
                )
                samples.append(self._finish(request, len(prompts[r]), generated[row], row_logprobs, k))
            results.append(samples)
        return results

    def _finish(
        self,
        request: GenerationRequest,
        prompt_tokens: int,
        ids: list[int],
        logprobs: torch.Tensor | None,
        index: int,
    ) -> Completion:
        """Cut one generated row at its limit, first EOS or first stop string."""
        ids = ids[: request.max_new_tokens]  # the batch may have decoded longer for other rows
        eos_at = next((j for j, t in enumerate(ids) if t in self._eos_ids), None)
        finish_reason, count = ("stop", eos_at + 1) if eos_at is not None else ("length", len(ids))
        kept = ids[:count] if eos_at is None else ids[:eos_at]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = _first_stop(text, request.stop)
        if cut is not None:
            position, stop = cut
            # The generated tokens up to the one that completed the stop string are what a server
            # would have produced (and billed) before stopping.
            count = next(
                j
                for j in range(1, len(kept) + 1)
                if len(self.tokenizer.decode(kept[:j], skip_special_tokens=True)) >= position + len(stop)
            )
            text, finish_reason, kept = text[:position], "stop", kept[:count]
        token_logprobs = None
        if logprobs is not None and request.logprobs is not None:
            token_logprobs = tuple(
                self._token_logprob(logprobs[j], t, request.logprobs) for j, t in enumerate(kept)
            )
        return Completion(text, finish_reason, prompt_tokens, count, token_logprobs, index)

    def _token_logprob(self, step: torch.Tensor, token_id: int, k: int) -> TokenLogprob:
        top = step.topk(k) if k > 0 else None
        alternatives = (
            ()
            if top is None
            else tuple(
                (self.tokenizer.decode([i]), float(v))
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            )
        )
        return TokenLogprob(self.tokenizer.decode([token_id]), float(step[token_id]), alternatives)


def plain_chat_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """A conversation as plain text, for a model without a chat template (the embedded teacher).

    The instruction suite's convention (`reference_impls.tasks.instructions.conversation_prompt`):
    system messages first, one per line; then each user turn immediately followed by the
    assistant's reply, one turn per line; the last user message ends the prompt. A single user
    message is exactly its content, the plain prompt.
    """
    lines: list[str] = []
    pending: str | None = None
    for message in messages:
        role, content = message["role"], message["content"]
        if role in ("system", "developer"):
            lines.append(content)
        elif role == "user":
            if pending is not None:
                lines.append(pending)
            pending = content
        else:  # assistant: completes the pending user turn
            lines.append((pending or "") + content)
            pending = None
    if pending is not None:
        lines.append(pending)
    return TURN_SEPARATOR.join(lines)


def _with_index(completion: Completion, index: int) -> Completion:
    return replace(completion, index=index)


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """``(position, stop string)`` of the earliest stop string in ``text``, or None."""
    hits = [(text.find(s), s) for s in stops if s in text]
    return min(hits) if hits else None


def _weights_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the weights and vocabulary, cheap even for large models.

    Each tensor contributes its name, shape, dtype and the bytes of up to 4096 evenly spaced
    entries: exact (unlike sums, the same on every device), and fine-tuning changes them.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()))
    digest.update(vocabulary.encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()[:16]
