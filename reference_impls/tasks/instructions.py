"""The instruction suite: what a tiny teacher must do for the instruction-following pipelines.

Black-box pipelines ask a teacher to *follow* an instruction, to *write new instructions* in the
style of seed examples, to *judge* or *rewrite* a response, to *evolve* an instruction and to
*annotate* a passage. This module defines each of those as a plain-text format on the embedded
character vocabulary, with exact scoring, so the teacher is a real model that can be wrong and
every pipeline's filters can be checked against ground truth.

**Instructions.** ``"<ops>: <input> ="`` where ``<ops>`` is one to three string operations
applied left to right (``rev``, ``sort``, ``up``, ``dedup``), e.g. ``"rev up: abc ="`` →
``"CBA"``, or one of the suite's atomic tasks (``copy``, ``add``, ``count``, ``vowel``; depth 1).
The composition depth is the difficulty axis: seeds are depth 1, the test split is balanced over
depths 1-3. The ``ood`` split asks the same instructions of longer inputs than training ever has
(words of 7-8 letters, the base suite's OOD sizes for the atomic tasks); conversations of such
instructions and typed queries over longer passages have ``ood`` splits too. An instruction's
*rationale* lists the intermediate results (``"cba;CBA"``).

**Meta-tasks** (teacher prompts → teacher responses):

====================  ===================================================  ======================
format                prompt                                               response
====================  ===================================================  ======================
follow                ``rev: abc =``                                       ``cba``
conversation          ``up: ab =AB\\nrev: abc =`` (earlier turns first)     ``cba``
system prompt         ``explain\\nrev up: abc =``                           ``cba;CBA => CBA``
new instruction       ``new: rev: ab = | up: cd = >``                      ``rev up: kqa =``
  topic-guided        ``new [sort]: rev: ab = | up: cd = >``               ``sort dedup: xyz =``
judge                 ``judge: rev: abc =cba ?``                           ``yes`` / ``no``
rewrite (fix)         ``fix: rev: abc =cab ?``                             ``cba``
evolve in depth       ``deepen: rev: abc =``                               ``rev up: abc =``
evolve in breadth     ``widen: rev: abc =``                                ``sort up: qzx =``
open annotation       ``ner: k3aZe =``                                     ``digit 3; vowel a e; upper Z``
typed query           ``find vowel: k3aZe =``                              ``a e`` (or ``none``)
====================  ===================================================  ======================

Every parser here (`parse_instruction`, `parse_annotation`, ...) returns ``None`` for malformed
text instead of raising: teacher output is untrusted input.

Changing a generator changes what the instruction teacher learns: bump ``SUITE_VERSION``.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace

from reference_impls.tasks.strings import _IN_DIST as _ATOMIC_SIZES  # the base suite's own sizes
from reference_impls.tasks.strings import _OOD as _ATOMIC_OOD_SIZES
from reference_impls.tasks.strings import ANSWER_MARK, TASKS, Example, add_rationale, count_rationale

SUITE_VERSION = "instruct-v1"
SPLITS = ("train", "test", "ood")

# Composable string operations, applied left to right.
OPS = {
    "rev": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "up": str.upper,
    "dedup": lambda s: "".join(dict.fromkeys(s)),
}
# Depth-1 tasks of the base suite (their generators and answers come from `tasks.TASKS`).
ATOMIC = ("copy", "add", "count", "vowel")
KINDS = (*OPS, *ATOMIC)  # the depth-1 instruction kinds
MAX_DEPTH = 3
WORD_LENGTH = (3, 6)  # letters in a string operation's input
OOD_WORD_LENGTH = (7, 8)  # the ood split: longer than any training input, within what parses

# System prompts (Orca's explanation tuning): one asks for the steps, one for the answer only.
EXPLAIN, BRIEF = "explain", "brief"
SYSTEM_PROMPTS = (EXPLAIN, BRIEF)
TURN_SEPARATOR = "\n"  # between the turns of a conversation, and after a system prompt

# Annotation (UniversalNER): entity types, in the order an annotation lists them.
ENTITY_TYPES = ("digit", "vowel", "upper")
NO_ENTITY = "none"
PASSAGE_LENGTH = (5, 8)
OOD_PASSAGE_LENGTH = (10, 12)  # the ood split of typed queries

JUDGE_YES, JUDGE_NO = "yes", "no"
_TEST_BUCKETS = 5


@dataclass(frozen=True)
class Instruction:
    """A parsed instruction: its operations (or one atomic task) and its input."""

    ops: tuple[str, ...]
    input: str

    @property
    def prompt(self) -> str:
        return f"{' '.join(self.ops)}: {self.input} ="

    @property
    def depth(self) -> int:
        return len(self.ops)


# ------------------------------------------------------------------------------- instructions


def random_word(rng: random.Random, length: tuple[int, int] = WORD_LENGTH) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(*length)))


def random_ops(rng: random.Random, depth: int, *, include: str | None = None) -> tuple[str, ...]:
    """``depth`` distinct string operations in random order (containing ``include`` if given)."""
    pool = [op for op in OPS if op != include]
    chosen = rng.sample(pool, depth - (include is not None))
    if include is not None:
        chosen.insert(rng.randrange(depth), include)
    return tuple(chosen)


def random_instruction(
    rng: random.Random, *, depth: int | None = None, kind: str | None = None, ood: bool = False
) -> Example:
    """A random instruction with its answer: a composition of ``depth`` string operations
    (``depth`` drawn from 1-3 when ``None``), or the atomic task ``kind``; with ``ood``, of
    inputs longer than the training distribution's."""
    if kind in ATOMIC:
        arg, response, rationale, answers = TASKS[kind](rng, _ATOMIC_OOD_SIZES if ood else _ATOMIC_SIZES)
        return _example((kind,), arg, response, rationale, answers)
    depth = depth or rng.randint(1, MAX_DEPTH)
    ops = random_ops(rng, depth, include=kind)
    return make_example(Instruction(ops, random_word(rng, OOD_WORD_LENGTH if ood else WORD_LENGTH)))


def make_example(instruction: Instruction) -> Example:
    """The `Example` (answer and rationale) for a well-formed string-operation instruction."""
    steps, text = [], instruction.input
    for op in instruction.ops:
        text = OPS[op](text)
        steps.append(text)
    rationale = ";".join(steps) if len(steps) > 1 else ""
    return _example(instruction.ops, instruction.input, text, rationale, (text,))


def _example(
    ops: tuple[str, ...], arg: str, response: str, rationale: str, answers: tuple[str, ...]
) -> Example:
    return Example(
        task=" ".join(ops),
        prompt=f"{' '.join(ops)}: {arg} =",
        response=response,
        rationale=rationale,
        answers=answers,
        label=len(ops),  # the depth, for per-depth reports
        input=arg,
    )


def parse_instruction(text: str) -> Example | None:
    """The instruction written in ``text`` with its exact answer, or ``None`` if it is malformed.

    Accepts ``"<ops>: <input> ="`` (trailing ``=`` optional, surrounding whitespace ignored):
    1-3 distinct operations of ``OPS`` over a lowercase word of 1-8 letters, or one atomic task
    with an input of its own format (``add``: ``"12+3"``; ``count``: ``"a in abcaab"``; ``vowel``:
    a word with a vowel; ``copy``: a lowercase word).
    """
    text = text.strip()
    if text.endswith("="):
        text = text[:-1].rstrip()
    head, sep, arg = text.partition(": ")
    if not sep or not arg or arg != arg.strip():
        return None
    ops = tuple(head.split(" "))
    if len(ops) == 1 and ops[0] in ATOMIC:
        return _parse_atomic(ops[0], arg)
    if not 1 <= len(ops) <= MAX_DEPTH or len(set(ops)) != len(ops) or any(op not in OPS for op in ops):
        return None
    if not (1 <= len(arg) <= 8 and all(c in string.ascii_lowercase for c in arg)):
        return None
    return make_example(Instruction(ops, arg))


def _parse_atomic(task: str, arg: str) -> Example | None:
    lowercase = set(string.ascii_lowercase)
    if task in ("copy", "vowel"):
        if not (1 <= len(arg) <= 8 and set(arg) <= lowercase):
            return None
        if task == "copy":
            return _example((task,), arg, arg, "", (arg,))
        vowels = tuple(sorted(set(arg) & set("aeiou")))
        return _example((task,), arg, vowels[0], "", vowels) if vowels else None
    if task == "add":
        a, plus, b = arg.partition("+")
        if not (plus and a.isdigit() and b.isdigit() and len(a) <= 3 and len(b) <= 3):
            return None
        total = str(int(a) + int(b))
        return _example((task,), arg, total, add_rationale(int(a), int(b)), (total,))
    target, found, word = arg.partition(" in ")  # count
    if not (found and len(target) == 1 and target in lowercase and word and set(word) <= lowercase):
        return None
    count = str(word.count(target))
    return _example((task,), arg, count, count_rationale(target, word), (count,))


def depth_of(example: Example) -> int:
    """Composition depth of a suite instruction (atomic tasks: 1)."""
    return len(example.task.split(" "))


# ----------------------------------------------------------------------------- splits, seeds


def in_test_bucket(prompt: str) -> bool:
    """Whether an instruction prompt belongs to the test distribution (stable hash, 1 in 5)."""
    return int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % _TEST_BUCKETS == 0


def split_rng(name: str, seed: int) -> random.Random:
    return random.Random(f"kdatlas-{SUITE_VERSION}-{seed}-{name}")


def make_instructions(
    split: str, n: int, *, seed: int = 0, depths: Sequence[int] = (1, 2, 3), balanced: bool = True
) -> list[Example]:
    """``n`` instructions of ``split`` with their answers.

    With ``balanced`` the stream cycles so that each depth in ``depths`` gets the same share,
    and depth 1 is spread evenly over its eight kinds. Train and test never share a prompt; the
    ``ood`` split's inputs are longer than either's. Prefix-stable: ``make_instructions(s, 10)`` equals ``make_instructions(s, 100)[:10]``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} — choose one of {', '.join(SPLITS)}")
    rng = split_rng(split, seed)
    examples: list[Example] = []
    while len(examples) < n:
        # Balanced: slot i has depth depths[i % len(depths)]; depth-1 slots cycle over the kinds.
        # A rejected draw (wrong bucket) is redrawn for the same slot.
        slot = len(examples)
        depth = depths[slot % len(depths)] if balanced else rng.choice(list(depths))
        kind = None
        if depth == 1:
            kind = KINDS[(slot // len(depths)) % len(KINDS)] if balanced else rng.choice(KINDS)
        example = random_instruction(rng, depth=depth, kind=kind, ood=split == "ood")
        if split != "ood" and in_test_bucket(example.prompt) != (split == "test"):
            continue
        examples.append(example)
    return examples


def seed_tasks(n: int = 24, *, seed: int = 0) -> list[Example]:
    """The human-written seed tasks: ``n`` depth-1 instructions (every kind in turn) with their
    reference answers, from the training distribution. The baseline student sees only these."""
    return make_instructions("train", n, seed=seed + 1000, depths=(1,))


# ---------------------------------------------------------------------------------- renderings


def conversation_prompt(
    history: Sequence[tuple[str, str]], instruction: str, *, system: str | None = None
) -> str:
    """The prompt of a conversation's next turn: ``system`` (if any), then each earlier turn as
    ``instruction + response``, one per line, then the current instruction."""
    lines = ([system] if system else []) + [f"{u}{a}" for u, a in history] + [instruction]
    return TURN_SEPARATOR.join(lines)


def explained(example: Example) -> str:
    """The response to the ``explain`` system prompt: ``"<rationale> => <answer>"`` when the
    instruction has intermediate steps, else the answer."""
    return f"{example.rationale}{ANSWER_MARK}{example.response}" if example.rationale else example.response


def new_instruction_prompt(seeds: Sequence[str], *, topic: str | None = None) -> str:
    """Ask for a new instruction in the style of ``seeds`` (instruction prompts), optionally on
    ``topic`` (an operation or atomic task name)."""
    head = f"new [{topic}]:" if topic else "new:"
    return f"{head} {' | '.join(s.strip() for s in seeds)} >"


def judge_prompt(instruction: str, response: str) -> str:
    """Ask whether ``response`` answers ``instruction`` correctly (answer: ``yes`` / ``no``)."""
    return f"judge: {instruction.strip()}{response} ?"


def fix_prompt(instruction: str, response: str) -> str:
    """Ask for a corrected ``response`` to ``instruction`` (an already correct one is repeated)."""
    return f"fix: {instruction.strip()}{response} ?"


def deepen_prompt(instruction: str) -> str:
    """In-depth evolution: the same input with one more operation."""
    return f"deepen: {instruction.strip()}"


def widen_prompt(instruction: str) -> str:
    """In-breadth evolution: a different instruction of the same depth and similar input length."""
    return f"widen: {instruction.strip()}"


def annotate_prompt(passage: str) -> str:
    """Open annotation: every entity of every type in ``passage``."""
    return f"ner: {passage} ="


def find_prompt(entity_type: str, passage: str) -> str:
    """A typed query: the entities of ``entity_type`` in ``passage`` (``none`` if there are none)."""
    return f"find {entity_type}: {passage} ="


# --------------------------------------------------------------------------- annotation task


def random_passage(rng: random.Random, length: tuple[int, int] = PASSAGE_LENGTH) -> str:
    """Letters and digits; each entity type present with probability about one half."""
    present = {t for t in ENTITY_TYPES if rng.random() < 0.55}
    pools = {
        "digit": string.digits,
        "vowel": "aeiou",
        "upper": string.ascii_uppercase,
    }
    filler = "".join(c for c in string.ascii_lowercase if c not in "aeiou")
    chars = [rng.choice(filler) for _ in range(rng.randint(*length))]
    for entity_type in sorted(present):
        for _ in range(rng.randint(1, 2)):
            chars[rng.randrange(len(chars))] = rng.choice(pools[entity_type])
    return "".join(chars)


def entities(passage: str) -> dict[str, list[str]]:
    """The exact annotation of ``passage``: entity type → its characters in order of occurrence."""
    tests = {"digit": str.isdigit, "vowel": lambda c: c in "aeiou", "upper": str.isupper}
    found = {t: [c for c in passage if tests[t](c)] for t in ENTITY_TYPES}
    return {t: chars for t, chars in found.items() if chars}


def format_annotation(annotation: dict[str, list[str]]) -> str:
    """``"digit 3; vowel a e"``: the types present, in ``ENTITY_TYPES`` order (``none`` if empty)."""
    parts = [f"{t} {' '.join(annotation[t])}" for t in ENTITY_TYPES if annotation.get(t)]
    return "; ".join(parts) or NO_ENTITY


def parse_annotation(text: str) -> dict[str, list[str]] | None:
    """Inverse of `format_annotation`; ``None`` for malformed text (unknown type, repeated type,
    multi-character entity, empty part)."""
    text = text.strip()
    if text == NO_ENTITY:
        return {}
    result: dict[str, list[str]] = {}
    for part in text.split(";"):
        words = part.split()
        if len(words) < 2 or words[0] not in ENTITY_TYPES or words[0] in result:
            return None
        if any(len(w) != 1 for w in words[1:]):
            return None
        result[words[0]] = words[1:]
    return result


def find_example(entity_type: str, passage: str) -> Example:
    """The typed query as an `Example` (answer: the entities joined by spaces, or ``none``)."""
    answer = " ".join(entities(passage).get(entity_type, [])) or NO_ENTITY
    return Example(
        f"find {entity_type}", find_prompt(entity_type, passage), answer, "", (answer,), 0, passage
    )


def make_find_queries(split: str, n: int, *, seed: int = 0) -> list[Example]:
    """Typed queries over fresh passages, every type in turn, about half of them negative (the
    ``ood`` split: over passages longer than any in training)."""
    rng = split_rng(f"find-{split}", seed)
    queries: list[Example] = []
    while len(queries) < n:
        if split == "ood":
            passage = random_passage(rng, OOD_PASSAGE_LENGTH)
        else:
            passage = random_passage(rng)
            if in_test_bucket(passage) != (split == "test"):
                continue
        queries.append(find_example(ENTITY_TYPES[len(queries) % len(ENTITY_TYPES)], passage))
    return queries


# ------------------------------------------------------------------- conversations (multi-turn)


@dataclass(frozen=True)
class Conversation:
    """A multi-turn conversation: ``turns`` are (instruction, response) pairs; ``answers`` hold
    the valid answers of each turn (for scoring)."""

    turns: tuple[tuple[str, str], ...]
    answers: tuple[tuple[str, ...], ...]


def make_conversations(
    split: str, n: int, *, seed: int = 0, turns: tuple[int, int] = (2, 3)
) -> list[Conversation]:
    """``n`` conversations of 2-3 turns of instructions with their reference answers (the ``ood``
    split: of instructions with longer inputs than training has)."""
    rng = split_rng(f"chat-{split}", seed)
    ood = split == "ood"
    conversations: list[Conversation] = []
    while len(conversations) < n:
        examples = [random_instruction(rng, depth=rng.randint(1, 2), ood=ood) for _ in range(rng.randint(*turns))]
        if not ood and in_test_bucket(examples[-1].prompt) != (split == "test"):
            continue
        conversations.append(
            Conversation(tuple((e.prompt, e.response) for e in examples), tuple(e.answers for e in examples))
        )
    return conversations


def last_turn_example(conversation: Conversation) -> Example:
    """The last turn as an `Example` whose prompt carries the earlier turns (for scoring)."""
    *history, (instruction, response) = conversation.turns
    prompt = conversation_prompt(history, instruction)
    return Example(
        "chat", prompt, response, "", conversation.answers[-1], len(conversation.turns), instruction
    )


def with_prompt(example: Example, prompt: str) -> Example:
    """``example`` asked with a different prompt (e.g. under a system prompt); same answers."""
    return replace(example, prompt=prompt)
