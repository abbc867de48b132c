"""Bootstrapped instruction generation and answering: the loop Self-Instruct introduced and Alpaca,
LaMini-LM, GPT-4-LLM and Lion reuse.

`bootstrap_instructions` grows a pool from the seed tasks. Each teacher request shows a few
demonstrations (human seeds, optionally mixed with instructions generated earlier) and asks for
a new instruction; a generation is kept when it is a well-formed instruction (the suite's parser
stands in for the papers' heuristic filters: length, keywords, format) and passes the ROUGE-L
novelty filter against the whole pool. `answer_instructions` then asks the teacher to answer
each kept instruction and drops unusable responses (empty, truncated, no content).

The teacher's answers are *not* checked for correctness: the papers train on them as they are.
How often they are right is measured with the suite's exact answers and reported
(``teacher_answers_correct``), never used to filter.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from reference_impls.black_box.filters import NoveltyFilter, count, response_problem
from reference_impls.black_box.pipeline import PipelineContext
from reference_impls.core.sft import TrainingExample
from reference_impls.tasks import instructions as suite
from reference_impls.tasks.strings import Example, extract_answer


@dataclass(frozen=True)
class GenerationSettings:
    """How instructions are requested from the teacher.

    Attributes:
        human_demos: Seed tasks shown per request.
        machine_demos: Earlier generated instructions shown per request (Self-Instruct mixes
            them in; Alpaca shows seeds only).
        temperature: Sampling temperature of the teacher.
        top_p: Nucleus mass of the teacher's sampling.
        novelty_threshold: Reject a generation whose ROUGE-L to the pool is above this.
        requests_per_round: Teacher requests between two pool updates.
        max_rounds: Stop after this many rounds even if the target is not reached.
    """

    human_demos: int = 3
    machine_demos: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    novelty_threshold: float = 0.7
    requests_per_round: int = 256
    max_rounds: int = 20


def bootstrap_instructions(
    context: PipelineContext,
    target: int,
    settings: GenerationSettings,
    *,
    tag: str,
    demo_pool: Sequence[Example] | None = None,
    topics: Sequence[str] | None = None,
    novelty: NoveltyFilter | None = None,
) -> list[Example]:
    """Generate up to ``target`` new, novel, well-formed instructions.

    Args:
        context: The pipeline context (teacher access, seeds, stats).
        target: How many instructions to keep.
        settings: Demonstrations, sampling and filter settings.
        tag: Names this generation in the cache seeds and the stats.
        demo_pool: Human demonstrations to sample from (default: the seed tasks).
        topics: If given, each request names a topic drawn from it (topic-guided generation).
        novelty: The pool filter to use (default: a new one holding the seed tasks); pass one to
            share a pool across calls (Lion's rounds).

    Returns:
        The kept instructions (with the suite's exact answers, used only for scoring reports).
    """
    human = list(demo_pool if demo_pool is not None else context.seeds)
    novelty = novelty or NoveltyFilter([e.prompt for e in context.seeds], settings.novelty_threshold)
    rng = random.Random(f"{context.config.seed}-{tag}")
    kept: list[Example] = []
    stats = context.stats
    for round_index in range(settings.max_rounds):
        if len(kept) >= target:
            break
        prompts = []
        for _ in range(settings.requests_per_round):
            demos = rng.sample(human, min(settings.human_demos, len(human)))
            demos += rng.sample(kept, min(settings.machine_demos, len(kept)))
            rng.shuffle(demos)
            topic = rng.choice(list(topics)) if topics else None
            prompts.append(suite.new_instruction_prompt([d.prompt for d in demos], topic=topic))
        completions = context.ask(
            prompts,
            tag=f"{tag}-round{round_index}",
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_new_tokens=24,
        )
        for completion in completions:
            count(stats, f"{tag}: generated")
            if response_problem(completion) is not None:
                count(stats, f"{tag}: dropped ({response_problem(completion)})")
                continue
            parsed = suite.parse_instruction(completion.text)
            if parsed is None:
                count(stats, f"{tag}: dropped (malformed instruction)")
                continue
            if not novelty.admit(parsed.prompt):
                count(stats, f"{tag}: dropped (ROUGE-L > {settings.novelty_threshold:g} to the pool)")
                continue
            kept.append(parsed)
            if len(kept) >= target:
                break
    stats[f"{tag}: kept"] = len(kept)
    return kept


def answer_instructions(
    context: PipelineContext,
    instructions: Sequence[Example],
    *,
    tag: str,
    temperature: float = 0.0,
    system: str | None = None,
) -> list[TrainingExample]:
    """The teacher's answer to each instruction as a training pair; unusable answers dropped.

    Args:
        system: A system prompt put before each instruction (Orca); the training pair keeps it.
    """
    prompts = [suite.conversation_prompt([], e.prompt, system=system) for e in instructions]
    completions = context.ask(prompts, tag=tag, temperature=temperature, stop=(suite.TURN_SEPARATOR,))
    examples, correct = [], 0
    for prompt, instruction, completion in zip(prompts, instructions, completions, strict=True):
        problem = response_problem(completion)
        if problem is not None:
            count(context.stats, f"{tag}: dropped ({problem})")
            continue
        answer = completion.text.strip()
        read = extract_answer(answer) if system == suite.EXPLAIN else answer
        correct += read in instruction.answers
        examples.append(TrainingExample.single(prompt, answer))
    context.stats[f"{tag}: answers kept"] = len(examples)
    context.stats[f"{tag}: teacher answers correct"] = round(correct / max(1, len(examples)), 4)
    return examples
