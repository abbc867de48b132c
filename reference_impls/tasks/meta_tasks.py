"""The meta-task mix the embedded instruction teacher learns: one training pair per request format.

The formats themselves (follow, conversation, system prompts, write a new instruction, judge,
fix, deepen, widen, annotate, typed queries) are the instruction suite's
(`reference_impls.tasks.instructions`); this module draws the teacher's training pairs from them,
with the suite's exact responses (`teacher_training_pairs`), and the ways a response can be wrong
that the judge and fix tasks are trained on. Changing it changes the teacher: bump the suite's
``SUITE_VERSION``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence

from reference_impls.tasks.instructions import (
    ATOMIC,
    ENTITY_TYPES,
    EXPLAIN,
    JUDGE_NO,
    JUDGE_YES,
    KINDS,
    MAX_DEPTH,
    OPS,
    SYSTEM_PROMPTS,
    TURN_SEPARATOR,
    WORD_LENGTH,
    Instruction,
    annotate_prompt,
    conversation_prompt,
    deepen_prompt,
    entities,
    explained,
    find_example,
    fix_prompt,
    format_annotation,
    in_test_bucket,
    judge_prompt,
    new_instruction_prompt,
    parse_instruction,
    random_instruction,
    random_ops,
    random_passage,
    random_word,
    split_rng,
    widen_prompt,
)
from reference_impls.tasks.strings import Example


def corrupted(rng: random.Random, example: Example) -> str:
    """A wrong response to ``example``: a near miss (one character changed, dropped or swapped)
    or the answer to a different instruction."""
    answer = example.response
    for _ in range(20):
        choice = rng.random()
        if choice < 0.3 and len(answer) > 1:
            i = rng.randrange(len(answer) - 1)
            wrong = answer[:i] + answer[i + 1] + answer[i] + answer[i + 2 :]
        elif choice < 0.55 and len(answer) > 1:
            i = rng.randrange(len(answer))
            wrong = answer[:i] + answer[i + 1 :]
        elif choice < 0.8:
            i = rng.randrange(max(1, len(answer)))
            alphabet = string.digits if answer.isdigit() else string.ascii_letters
            wrong = answer[:i] + rng.choice(alphabet) + answer[i + 1 :]
        else:
            wrong = random_instruction(rng, depth=example.label if " " in example.task else None).response
        if wrong and wrong not in example.answers:
            return wrong
    return answer + "x" if answer + "x" not in example.answers else answer + "y"


def deepened(rng: random.Random, example: Example) -> str:
    ops = tuple(example.task.split(" "))
    if ops[0] in ATOMIC or len(ops) >= MAX_DEPTH:
        return example.prompt  # nothing to add: the evolution fails (and is eliminated)
    extra = rng.choice([op for op in OPS if op not in ops])
    position = rng.randrange(len(ops) + 1)
    return Instruction((*ops[:position], extra, *ops[position:]), example.input).prompt


def widened(rng: random.Random, example: Example) -> str:
    ops = tuple(example.task.split(" "))
    if ops[0] in ATOMIC:
        kind = rng.choice([k for k in KINDS if k != ops[0]])
        return random_instruction(rng, kind=kind).prompt
    while True:
        new_ops = random_ops(rng, len(ops))
        if new_ops != ops:
            length = max(WORD_LENGTH[0], min(WORD_LENGTH[1], len(example.input) + rng.randint(-1, 1)))
            return Instruction(new_ops, random_word(rng, (length, length))).prompt


def new_instruction(rng: random.Random, seeds: Sequence[Example], topic: str | None) -> str:
    """What a good generator writes: a seed's operations with a fresh input, or two seeds'
    operations recombined (mutate and recombine, as Self-Instruct's pool grows); on a topic, an
    instruction of that topic."""
    if topic is not None:
        kind = topic if topic in ATOMIC else None
        depth = 1 if kind else rng.randint(1, MAX_DEPTH)
        return random_instruction(rng, depth=depth, kind=kind or topic).prompt
    first = rng.choice(seeds)
    ops = tuple(first.task.split(" "))
    if ops[0] in ATOMIC:
        return random_instruction(rng, kind=ops[0]).prompt
    other = rng.choice(seeds)
    other_ops = tuple(o for o in other.task.split(" ") if o in OPS and o not in ops)
    if other_ops and len(ops) < MAX_DEPTH and rng.random() < 0.5:
        ops = (*ops, *other_ops)[:MAX_DEPTH]
    return Instruction(ops, random_word(rng)).prompt


# Meta-task → share of the instruction teacher's training mix.
TEACHER_MIX = {
    "follow": 0.34,
    "conversation": 0.08,
    "system": 0.08,
    "new": 0.12,
    "judge": 0.09,
    "fix": 0.09,
    "deepen": 0.05,
    "widen": 0.04,
    "ner": 0.05,
    "find": 0.06,
}


def teacher_example(rng: random.Random, meta: str) -> tuple[str, str]:
    """One ``(prompt, response)`` training pair of meta-task ``meta`` (see the module table)."""
    example = random_instruction(rng, depth=rng.randint(1, MAX_DEPTH))
    if rng.random() < 0.3:
        example = random_instruction(rng, kind=rng.choice(KINDS), depth=1)
    if meta == "follow":
        return example.prompt, example.response
    if meta == "conversation":
        history = [random_instruction(rng, depth=rng.randint(1, 2)) for _ in range(rng.randint(1, 2))]
        return conversation_prompt(
            [(h.prompt, h.response) for h in history], example.prompt
        ), example.response
    if meta == "system":
        system = rng.choice(SYSTEM_PROMPTS)
        response = explained(example) if system == EXPLAIN else example.response
        return conversation_prompt([], example.prompt, system=system), response
    if meta == "new":
        seeds = [random_instruction(rng, depth=rng.randint(1, 2)) for _ in range(rng.randint(1, 4))]
        topic = rng.choice(KINDS) if rng.random() < 0.4 else None
        return new_instruction_prompt([s.prompt for s in seeds], topic=topic), new_instruction(
            rng, seeds, topic
        )
    if meta in ("judge", "fix"):
        correct = rng.random() < (0.5 if meta == "judge" else 0.3)
        response = example.response if correct else corrupted(rng, example)
        if meta == "judge":
            return judge_prompt(example.prompt, response), JUDGE_YES if correct else JUDGE_NO
        return fix_prompt(example.prompt, response), example.response
    if meta == "deepen":
        return deepen_prompt(example.prompt), deepened(rng, example)
    if meta == "widen":
        return widen_prompt(example.prompt), widened(rng, example)
    passage = random_passage(rng)
    if meta == "ner":
        return annotate_prompt(passage), format_annotation(entities(passage))
    if meta == "find":
        query = find_example(rng.choice(ENTITY_TYPES), passage)
        return query.prompt, query.response
    raise ValueError(f"unknown meta-task {meta!r} — choose one of {', '.join(TEACHER_MIX)}")


def teacher_training_pairs(n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` training pairs for the instruction teacher, meta-tasks drawn by ``TEACHER_MIX``.

    Pairs whose instruction falls in the test bucket are redrawn, so test instructions (and
    test passages) are never trained on in any format.
    """
    rng = split_rng("teacher", seed)
    metas, weights = list(TEACHER_MIX), list(TEACHER_MIX.values())
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        prompt, response = teacher_example(rng, rng.choices(metas, weights)[0])
        if any(in_test_bucket(p) for p in instructions_in(prompt)):
            continue
        pairs.append((prompt, response))
    return pairs


def instructions_in(prompt: str) -> list[str]:
    """The instruction (or passage) prompts a teacher prompt is about, for the test-bucket check."""
    body = prompt.split(TURN_SEPARATOR)[-1]
    for head in ("judge: ", "fix: ", "deepen: ", "widen: "):
        if body.startswith(head):
            body = body[len(head) :]
            parsed = parse_instruction(body.split("=")[0] + "=") if "=" in body else None
            return [parsed.prompt] if parsed else []
    if body.startswith(("ner: ", "find ")):
        return [body.split(": ", 1)[1].rstrip(" =")]
    if body.startswith("new"):
        return []
    return [body]
