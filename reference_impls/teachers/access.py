"""The entry point black-box pipelines use: a `TextTeacher` behind the persistent response cache.

`cached_generate(teacher, requests, cache_path)` answers `GenerationRequest`s with `Completion`s
like ``teacher.generate`` does — ``n`` completions per request, next to each other — but every
completion is stored in a `ResponseCache` under the teacher's identity, the request and the
sample's index, so a rerun makes no teacher call and an interrupted run resumes. A request with
``n > 1`` is cached as ``n`` entries (``sample_index`` 0 … n−1) and generated as ``n``
single-sample requests with seeds ``seed + i`` (or no seed), so that each sample is cached and
reproducible on its own — `LocalTeacher` draws sample ``i`` of a request from seed ``seed + i``
too, so both give the same samples. Log-probs, when requested, are part of the key and stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.progress import Progress

from reference_impls.teachers.messages import Completion, GenerationRequest
from reference_impls.teachers.response_cache import ResponseCache
from reference_impls.teachers.text import TextTeacher


def single_samples(request: GenerationRequest) -> list[GenerationRequest]:
    """The ``n`` single-sample requests of ``request`` (seeds ``seed + i`` when seeded)."""
    return [
        replace(request, n=1, seed=None if request.seed is None else request.seed + index)
        for index in range(request.n)
    ]


def cached_generate(
    teacher: TextTeacher,
    requests: Sequence[GenerationRequest],
    cache_path: str | Path,
    *,
    batch_size: int = 16,
    progress: bool | Progress = True,
    description: str = "teacher generation",
) -> list[Completion]:
    """``teacher.generate(requests)`` through the response cache at ``cache_path``."""
    singles, indices = [], []
    for request in requests:
        samples = single_samples(request)
        singles += samples
        # An unseeded request's samples differ only by their index; seeded ones by their seed
        # too, but the index keeps the key of sample i the same whatever the seed convention.
        indices += range(len(samples))
    completions = ResponseCache(cache_path).generate_cached(
        teacher.generate,
        singles,
        identity=teacher.identity(),
        sample_indices=indices,
        batch_size=batch_size,
        progress=progress,
        description=description,
    )
    return [replace(completion, index=index) for completion, index in zip(completions, indices, strict=True)]
