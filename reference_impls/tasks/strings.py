"""The synthetic task suite: short string and arithmetic instructions with exact scoring.

Every example is a prompt such as ``"rev: abc ="`` and a response such as ``"cba"``; the model
sees their plain concatenation ``"rev: abc =cba"``. Scoring is exact: a prediction is correct
when it equals one of ``answers`` (after stripping surrounding whitespace). One task
(``vowel``) has several valid answers, so mode-seeking and mean-seeking objectives can differ.

Splits (all deterministic given the seed):

* ``train`` and ``test``: the same distribution, made disjoint by hashing the prompt (a prompt
  whose hash falls in the test bucket can only ever appear in ``test``);
* ``ood``: longer strings and three-digit numbers;
* ``perturbed``: the ``test`` examples with whitespace noise in the prompt, same answers.

Changing any generator changes what cached teachers learned, so bump ``SUITE_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

SUITE_VERSION = "v1"
SPLITS = ("train", "test", "ood", "perturbed")
# Marks the end of a rationale in the chain-of-thought rendering: "<rationale> => <answer>".
ANSWER_MARK = " => "

_LETTERS = string.ascii_lowercase
_VOWELS = "aeiou"
# One prompt in five (by hash) belongs to the test distribution.
_TEST_BUCKETS = 5
# Share of training prompts with whitespace noise: rare enough that the fully noisy "perturbed"
# split stays a robustness test, frequent enough that a good model can learn to ignore it.
_TRAIN_NOISE = 0.2


@dataclass(frozen=True)
class Example:
    """One task instance.

    Attributes:
        task: Task name, e.g. ``"rev"``.
        prompt: What the model is conditioned on, e.g. ``"rev: abc ="``.
        response: The reference response, e.g. ``"cba"`` (one of ``answers``).
        rationale: Step-by-step text for chain-of-thought, ``""`` for tasks without one.
        answers: Every valid answer; exact-match scoring accepts any of them.
        label: Class id for the classification view (the task's index in ``TASKS``).
        input: The task's argument without the task name, e.g. ``"abc"`` (used for few-shot
            prompts, where the task is only shown by demonstrations).
    """

    task: str
    prompt: str
    response: str
    rationale: str
    answers: tuple[str, ...]
    label: int
    input: str


@dataclass(frozen=True)
class _Sizes:
    """Length ranges of one distribution (in-distribution or OOD)."""

    word: tuple[int, int]  # letters in a string argument
    count_word: int  # letters in the count task's string
    digits: int  # digits of each addend


# What a task generator returns: (input, response, rationale, answers).
_Generated = tuple[str, str, str, tuple[str, ...]]

_IN_DIST = _Sizes(word=(2, 5), count_word=6, digits=2)
_OOD = _Sizes(word=(6, 8), count_word=9, digits=3)


def _word(rng: random.Random, sizes: _Sizes) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(*sizes.word)))


def _simple(name: str, transform: Callable[[str], str]) -> Callable[[random.Random, _Sizes], _Generated]:
    """A task whose answer is a deterministic function of one random word."""

    def make(rng: random.Random, sizes: _Sizes) -> _Generated:
        word = _word(rng, sizes)
        return word, transform(word), "", (transform(word),)

    make.__name__ = f"_make_{name}"
    return make


def add_rationale(a: int, b: int) -> str:
    """Column-wise addition, least significant digit first, with the carry written out:
    ``add_rationale(57, 8) == "7+8+0=15;5+0+1=6"``."""
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(len(da)):
        x, y = int(da[i]), int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}")
        carry = total // 10
    if carry:
        steps.append(f"carry {carry}")
    return ";".join(steps)


def count_rationale(target: str, word: str) -> str:
    """The running count of ``target`` in ``word`` (``"1 2 3"``), ``"none"`` when absent."""
    return " ".join(str(i + 1) for i in range(word.count(target))) or "none"


def _make_add(rng: random.Random, sizes: _Sizes) -> _Generated:
    # A multi-digit number plus a one-digit number: small enough for the tiny teacher to learn
    # in its budget, while still needing a carry. OOD: one more digit on both sides.
    a = rng.randint(0, 10**sizes.digits - 1)
    b = rng.randint(0, 10 ** (sizes.digits - 1) - 1)
    return f"{a}+{b}", str(a + b), add_rationale(a, b), (str(a + b),)


def _make_count(rng: random.Random, sizes: _Sizes) -> _Generated:
    # Draw from the target and two distractors so that counts above one are common. A fixed
    # length keeps counting learnable for the tiny teacher (OOD: a longer word).
    pool = rng.sample(_LETTERS, 3)
    target = pool[0]
    word = "".join(rng.choice(pool) for _ in range(sizes.count_word))
    count = str(word.count(target))
    return f"{target} in {word}", count, count_rationale(target, word), (count,)


def _make_vowel(rng: random.Random, sizes: _Sizes) -> _Generated:
    # Several valid answers: every vowel that occurs. The reference picks one at random, so a
    # teacher trained on it learns a spread-out (multi-modal) answer distribution.
    while True:
        word = _word(rng, sizes)
        vowels = tuple(sorted(set(word) & set(_VOWELS)))
        if len(vowels) >= 1:
            return word, rng.choice(vowels), "", vowels


# Task name -> generator; the order fixes the class labels.
TASKS: dict[str, Callable[[random.Random, _Sizes], _Generated]] = {
    "copy": _simple("copy", lambda w: w),
    "rev": _simple("rev", lambda w: w[::-1]),
    "sort": _simple("sort", lambda w: "".join(sorted(w))),
    "up": _simple("up", str.upper),
    "add": _make_add,
    "count": _make_count,
    "vowel": _make_vowel,
}
TASK_NAMES = tuple(TASKS)


def _in_test_bucket(prompt: str) -> bool:
    # A stable hash (not Python's salted hash()) so the partition is the same in every process.
    return int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % _TEST_BUCKETS == 0


def _make_example(task: str, rng: random.Random, sizes: _Sizes) -> Example:
    arg, response, rationale, answers = TASKS[task](rng, sizes)
    return Example(
        task=task,
        prompt=f"{task}: {arg} =",
        response=response,
        rationale=rationale,
        answers=answers,
        label=TASK_NAMES.index(task),
        input=arg,
    )


# Whitespace edits of a prompt: (spaces before, spaces after) the task name. They keep the
# meaning, so the answers stay valid; the adversarial evaluation searches the same set.
PROMPT_EDITS = ((1, 0), (0, 1), (1, 1), (2, 0), (2, 1), (0, 2), (2, 2), (1, 2))


def edited(example: Example, leading: int, trailing: int) -> Example:
    """``example`` with extra spaces before and after the task name; the answers are unchanged.

    The ``"<input> ="`` end of the prompt is kept intact: it is where the models find the
    argument they copy, reverse or sort.
    """
    return replace(example, prompt=f"{' ' * leading}{example.task}{' ' * trailing}: {example.input} =")


def prompt_edits(example: Example) -> list[Example]:
    """Every edit of `PROMPT_EDITS` applied to ``example`` (the candidates of an attack)."""
    return [edited(example, leading, trailing) for leading, trailing in PROMPT_EDITS]


def _perturb(example: Example, rng: random.Random) -> Example:
    return edited(example, *rng.choice(PROMPT_EDITS))


def oracle_distribution(example: Example) -> dict[str, float]:
    """The exact distribution the data generator draws ``example``'s response from.

    Every task but ``vowel`` has one answer (probability 1); ``vowel`` draws uniformly among
    the distinct vowels of its word (`_make_vowel`). The instruction suite builds its examples
    from the same generators and deterministic operations, so the rule holds there too. This is
    the *oracle* of the golden metric: a teacher trained on the suite only approximates it, and a
    student can imitate the teacher's errors instead of approaching it.

    Raises:
        ValueError: For examples read from a JSONL file (no known generating distribution) and
            for responses in another format than the bare answer (e.g. with a rationale).
    """
    if example.task == "jsonl":
        raise ValueError("the oracle is known only for the embedded suites: JSONL data has no known generating distribution")
    if example.response not in example.answers:
        raise ValueError(
            f"the response {example.response!r} is not one of the answers {example.answers}: the oracle "
            "is defined over bare answers, not over responses with a rationale"
        )
    return {answer: 1 / len(example.answers) for answer in example.answers}


def make_split(split: str, n: int, *, seed: int = 0, tasks: Sequence[str] = TASK_NAMES) -> list[Example]:
    """Generate ``n`` examples of ``split``, cycling through ``tasks`` in order.

    The stream is prefix-stable: ``make_split(s, 100)`` equals ``make_split(s, 1000)[:100]``.

    Args:
        split: One of ``"train"``, ``"test"``, ``"ood"``, ``"perturbed"``.
        n: Number of examples.
        seed: Seed of the generator (the split name is mixed in, so splits differ).
        tasks: Which tasks to include.

    Returns:
        The examples, deterministic given ``(split, n, seed, tasks)``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' — choose one of {', '.join(SPLITS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} — choose from {', '.join(TASK_NAMES)}")
    # str seeds are hashed with SHA-512 by random.Random, hence stable across processes.
    base = "test" if split == "perturbed" else split
    rng = random.Random(f"kdatlas-{SUITE_VERSION}-{seed}-{base}")
    noise_rng = random.Random(f"kdatlas-{SUITE_VERSION}-{seed}-noise")
    sizes = _OOD if split == "ood" else _IN_DIST
    examples: list[Example] = []
    while len(examples) < n:
        task = tasks[len(examples) % len(tasks)]
        example = _make_example(task, rng, sizes)
        # Rejection sampling keeps train and test disjoint (OOD lengths never overlap either).
        if base == "train" and _in_test_bucket(example.prompt):
            continue
        if base == "test" and not _in_test_bucket(example.prompt):
            continue
        noisy = split == "perturbed" or (base == "train" and noise_rng.random() < _TRAIN_NOISE)
        examples.append(_perturb(example, noise_rng) if noisy else example)
    return examples


def is_correct(prediction: str, example: Example) -> bool:
    """Exact match: ``prediction`` (whitespace-stripped) equals one of the valid answers."""
    return prediction.strip() in example.answers


def few_shot_prompt(examples: Sequence[Example], query: Example, k: int) -> str:
    """Render ``k`` demonstrations and the query, without naming the task (for ICL).

    Demonstrations are the first ``k`` examples of ``query``'s task in ``examples`` (the query
    itself excluded), one per line as ``"<input> = <response>"``; the last line is
    ``"<query input> ="``, so the model must infer the task from the demonstrations.

    Raises:
        ValueError: If fewer than ``k`` demonstrations of the task are available.
    """
    demos = [e for e in examples if e.task == query.task and e.prompt != query.prompt][:k]
    if len(demos) < k:
        raise ValueError(f"only {len(demos)} demonstrations of task '{query.task}' available, {k} requested")
    lines = [f"{d.input} = {d.response}" for d in demos]
    return "\n".join([*lines, f"{query.input} ="])


def with_rationale(example: Example) -> Example:
    """The chain-of-thought rendering: the response becomes ``"<rationale> => <answer>"``.

    Examples without a rationale are returned unchanged (answer only). Score outputs with
    `extract_answer` first.
    """
    if not example.rationale:
        return example
    return replace(example, response=f"{example.rationale}{ANSWER_MARK}{example.response}")


def extract_answer(text: str) -> str:
    """The answer part of a chain-of-thought output (after the last ``=>``), stripped."""
    return text.rsplit(ANSWER_MARK.strip(), 1)[-1].strip()


def classification_view(examples: Iterable[Example]) -> list[tuple[str, int]]:
    """``(text, label)`` pairs for encoder (BERT-era) methods: which operation produced a pair?

    The text is ``"<input> = <response>"`` without the task name, and the label is the task id,
    so the classifier must infer the operation from the input/output relation.
    """
    return [(f"{e.input} = {e.response}", e.label) for e in examples]


# ---------------------------------------------------------------------------------- JSONL files


def load_jsonl(path: str | Path) -> list[Example]:
    """Read ``{"prompt": ..., "response": ...}`` lines (optional ``"answers"``: a list of strings).

    Blank lines are skipped. Examples get ``task="jsonl"``, ``label=0`` and no rationale.

    Raises:
        ValueError: Naming ``file:line`` and how to fix it, for the first malformed line.
    """
    path = Path(path)
    hint = "each line must be a JSON object with 'prompt' and 'response'"
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: invalid JSON ({error.msg}) — {hint}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__} — {hint}")
        for key in ("prompt", "response"):
            if key not in record:
                raise ValueError(f"{where}: missing key '{key}' — {hint}")
            if not isinstance(record[key], str):
                raise ValueError(f"{where}: '{key}' must be a string — {hint}")
        answers = record.get("answers", [record["response"]])
        if not (isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
            raise ValueError(f"{where}: 'answers' must be a non-empty list of strings (or omitted)")
        examples.append(
            Example("jsonl", record["prompt"], record["response"], "", tuple(answers), 0, record["prompt"])
        )
    if not examples:
        raise ValueError(f"{path}: no examples — {hint}")
    return examples


def save_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    """Write examples as JSONL lines with ``prompt``, ``response`` and ``answers``."""
    lines = [
        json.dumps({"prompt": e.prompt, "response": e.response, "answers": list(e.answers)}) for e in examples
    ]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
