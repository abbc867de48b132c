"""The entry point black-box pipelines use: a `TextTeacher` behind the persistent response cache.

`cached_generate(teacher, requests, cache_path)` answers `GenerationRequest`s with `Completion`s
like ``teacher.generate`` does — ``n`` completions per request, next to each other — but every
completion is stored in a `ResponseCache` under the teacher's identity, the prompt and the
sampling parameters, so a rerun makes no teacher call and an interrupted run resumes. A request
with ``n > 1`` is cached as ``n`` entries (``sample_index`` 0 … n−1) and generated as ``n``
single-sample requests with seeds ``seed + i`` (or no seed), so that each sample is cached and
reproducible on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.progress import Progress

from .cache import Record, Request, ResponseCache, canonical_json
from .teacher import Completion, GenerationRequest, TextTeacher


def _samples(request: GenerationRequest) -> list[tuple[Request, GenerationRequest]]:
    """One (cache request, single-sample teacher request) pair per sample of ``request``."""
    chat = not isinstance(request.prompt, str)
    pairs = []
    for index in range(request.n):
        seed = None if request.seed is None else request.seed + index
        single = replace(request, n=1, seed=seed)
        key = Request(
            prompt=None if chat else request.prompt,
            messages=[{"role": m.role, "content": m.content} for m in request.prompt] if chat else None,
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            sample_index=index,
            stop=list(request.stop),
        )
        pairs.append((key, single))
    return pairs


def cached_generate(
    teacher: TextTeacher,
    requests: Sequence[GenerationRequest],
    cache_path: str | Path,
    *,
    batch_size: int = 16,
    progress: bool | Progress = True,
    description: str = "teacher generation",
) -> list[Completion]:
    """``teacher.generate(requests)`` through the response cache at ``cache_path``.

    Raises:
        ValueError: A request asks for log-probs — they are not part of the cache key yet, so a
            cached answer without them could be returned; ask the teacher directly instead.
    """
    if any(r.logprobs is not None for r in requests):
        raise ValueError(
            "cached_generate does not cache log-probs yet: call teacher.generate for those requests"
        )
    pairs = [pair for request in requests for pair in _samples(request)]
    by_key = {canonical_json(key.to_dict()): single for key, single in pairs}

    def generate(batch: list[Request]) -> list[Completion]:
        return teacher.generate([by_key[canonical_json(key.to_dict())] for key in batch])

    records = ResponseCache(cache_path).generate_cached(
        generate,
        [key for key, _ in pairs],
        identity=teacher.identity(),
        batch_size=batch_size,
        progress=progress,
        description=description,
    )
    return [_completion(record, key.sample_index) for record, (key, _) in zip(records, pairs, strict=True)]


def _completion(record: Record, index: int) -> Completion:
    return Completion(
        text=record.text,
        finish_reason=record.finish_reason or "unknown",
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        index=index,
    )
