r"""GPT4All (Anand et al., 2023): the teacher labels existing prompts, the pairs are curated, then SFT.

GPT4All does not invent instructions: it collects about one million prompts from public
sources, has ``gpt-3.5-turbo`` answer each, *curates* the pairs and fine-tunes LLaMA-7B on what
is left with plain cross-entropy, $\mathcal{L} = -\sum \log q_\theta(y\mid x)$.

Algorithm (technical report §1 "Data Collection and Curation"; ``TRAINING_LOG.md`` of
``nomic-ai/gpt4all``), each step mapped to an exact, counted rule here:

1. **Collect prompts** from three public sources: the unified chip2 subset of LAION OIG
   (dialogue-formatted prompts), a random sub-sample of Stack Overflow questions, and a
   sub-sample of Bigscience/P3 (templated prompts over NLP datasets). Stand-ins, all from the
   suite's training split: ``conversation`` prompts (a 2-3 turn conversation, the teacher answers
   the last turn), ``single`` instructions (depths 1-3), and ``templated`` prompts: the atomic
   ``count`` and ``vowel`` tasks, whose answers are one character, as P3's were often one word.
2. **Answer** every prompt with the teacher (greedy; the report states no sampling settings).
3. **Drop failed and malformed responses** ("removed all examples where GPT-3.5-Turbo failed to
   respond to prompts and produced malformed output": about 1M → 806,199 pairs). Here: empty,
   cut off at the length limit, or not a plain answer (any character other than a letter or a
   digit, e.g. an echoed prompt).
4. **Drop the low-diversity source** ("the entire Bigscience/P3 subset ... due to its very low
   output diversity; P3 contains many homogeneous prompts which produce short and homogeneous
   responses": 806,199 → 437,605 pairs). The report decided by inspecting an embedding map
   (Atlas); here a source is dropped when its output diversity, distinct responses / responses
   after step 3, is below ``min_source_diversity``. Each source's diversity is reported.
5. **Fine-tune** on the curated pairs. The report trains LoRA adapters on LLaMA-7B (lr 5e-5,
   global batch 32, 4 epochs, max length 1024, ``TRAINING_LOG.md``); here the embedded student is
   fully fine-tuned with the budget shared by all methods (the log also trains a full model).

BibTeX: ``anand2023gpt4all``.
"""

from __future__ import annotations

import random
import re

from reference_impls.black_box.filters import count, response_problem
from reference_impls.black_box.pipeline import DistilledData, PipelineContext, TextPipeline
from reference_impls.core.recipe import Recipe
from reference_impls.core.sft import TrainingExample
from reference_impls.losses.numerics import check_unit_interval
from reference_impls.registry import register
from reference_impls.tasks import instructions as suite
from reference_impls.tasks.strings import Example
from reference_impls.teachers.text import Completion

SOURCES = ("single", "conversation", "templated")  # Stack Overflow, LAION OIG chip2, P3 stand-ins
TEMPLATED_KINDS = ("count", "vowel")  # one-character answers
_PLAIN_ANSWER = re.compile(r"[A-Za-z0-9]+")


def collect_prompts(source: str, n: int, *, seed: int = 0) -> list[Example]:
    """``n`` existing prompts of ``source`` from the suite's training split (with exact answers,
    used only to report how often the teacher is right)."""
    if source == "single":
        return suite.make_instructions("train", n, seed=seed)
    if source == "conversation":
        return [suite.last_turn_example(c) for c in suite.make_conversations("train", n, seed=seed)]
    if source == "templated":
        rng = random.Random(f"gpt4all-templated-{seed}")
        prompts: list[Example] = []
        while len(prompts) < n:
            example = suite.random_instruction(rng, kind=TEMPLATED_KINDS[len(prompts) % len(TEMPLATED_KINDS)])
            if not suite.in_test_bucket(example.prompt):
                prompts.append(example)
        return prompts
    raise ValueError(f"unknown source {source!r} — choose one of {', '.join(SOURCES)}")


def output_problem(completion: Completion) -> str | None:
    """Why a response fails curation step 3 (``"empty"``, ``"truncated"``, ``"no content"``,
    ``"malformed"``), or ``None``. Correctness is never checked: GPT4All did not check it."""
    problem = response_problem(completion)
    if problem is not None:
        return problem
    return None if _PLAIN_ANSWER.fullmatch(completion.text.strip()) else "malformed"


def output_diversity(responses: list[str]) -> float:
    """Distinct responses / responses (0 for none): 1 when every answer differs."""
    return len(set(responses)) / len(responses) if responses else 0.0


@register("gpt4all")
def gpt4all_recipe(
    single_prompts: int = 300,
    conversation_prompts: int = 250,
    templated_prompts: int = 450,
    min_source_diversity: float = 0.5,
) -> Recipe:
    """GPT4All's labelling of existing prompts with two-step curation, then SFT.

    Args:
        single_prompts: Single instructions collected (the Stack Overflow questions' stand-in).
        conversation_prompts: Conversation prompts collected (LAION OIG unified chip2's stand-in).
        templated_prompts: Templated one-character-answer prompts (P3's stand-in). The three
            sizes follow the report's proportions: P3 was 368,594 of the 806,199 pairs left after
            step 3 (46%); the split between the other two sources is not stated.
        min_source_diversity: Drop a whole source whose distinct responses / responses is below
            this (the report's removal of P3 for its low output diversity, made by inspection;
            0 keeps every source, the report's first experiments, which trained with P3).

    Raises:
        ValueError: A hyper-parameter outside its range.
    """
    sizes = {"single": single_prompts, "conversation": conversation_prompts, "templated": templated_prompts}
    for source, size in sizes.items():
        if size < 0:
            raise ValueError(f"{source}_prompts must be >= 0, got {size}")
    if sum(sizes.values()) < 1:
        raise ValueError(
            "at least one of single_prompts, conversation_prompts, templated_prompts must be >= 1"
        )
    check_unit_interval("min_source_diversity", min_source_diversity)

    def build(context: PipelineContext) -> DistilledData:
        stats, examples = context.stats, []
        for source, size in sizes.items():
            tag = f"gpt4all {source}"
            prompts = collect_prompts(source, size, seed=context.config.seed)
            completions = context.ask([p.prompt for p in prompts], tag=tag, stop=(suite.TURN_SEPARATOR,))
            kept, correct = [], 0
            for prompt, completion in zip(prompts, completions, strict=True):
                problem = output_problem(completion)
                if problem is not None:
                    count(stats, f"{tag}: dropped ({problem})")
                    continue
                answer = completion.text.strip()
                correct += answer in prompt.answers
                kept.append(TrainingExample.single(prompt.prompt, answer))
            diversity = output_diversity([e.segments[1][0] for e in kept])
            stats[f"{tag}: collected"] = len(prompts)
            stats[f"{tag}: output diversity"] = round(diversity, 4)
            stats[f"{tag}: teacher answers correct"] = round(correct / max(1, len(kept)), 4)
            if kept and diversity < min_source_diversity:
                count(stats, f"{tag}: dropped (low-diversity source)", len(kept))
                kept = []
            stats[f"{tag}: kept"] = len(kept)
            examples += kept
        return DistilledData(examples)

    return Recipe(
        method_id="gpt4all",
        data=TextPipeline(build),
        evaluation="instructions",
    )
