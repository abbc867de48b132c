r"""Evol-Instruct (Xu et al., WizardLM, ICLR 2024): grow harder instructions by repeated rewriting.

Instead of sampling new tasks next to the seeds (Self-Instruct), Evol-Instruct *mutates* existing
instructions. Each round, every instruction of the pool is rewritten by the teacher with one
evolution prompt drawn at random: an **in-depth** prompt makes it a little harder (add a
constraint, deepen, concretize, ask for more reasoning steps; 10-20 more words), the **in-breadth**
prompt writes a new, rarer instruction of the same domain and similar complexity. The teacher
answers the evolved instruction, failed evolutions are eliminated and their originals go back
to the pool for the next round, and the student is fine-tuned with cross-entropy on the mix of
every round, $\mathcal{L} = -\sum_{(x,y)\in D^{(0)}\cup\dots\cup D^{(M)}} \log q_\theta(y\mid x)$.

Algorithm (§3 of the paper; ``Evol_Instruct/main.py``, ``depth.py``, ``breadth.py``):

1. $D^{(0)}$ ← an Alpaca pool (Alpaca's 52K instructions in the paper; here Alpaca's
   generation settings run on the seed tasks: 3 seed demonstrations, T = 1, ROUGE-L ≤ 0.7).
2. For rounds $t = 1..M$ ($M = 4$): for each instruction of the pool, pick one of the five
   evolution prompts uniformly (four in-depth, one in-breadth: in-depth with probability 4/5);
   the suite has one in-depth rewrite (`suite.deepen_prompt`: one more operation on the same
   input) and one in-breadth rewrite (`suite.widen_prompt`).
3. The teacher answers each evolved instruction.
4. **Elimination** (§3.1 "Elimination Evolving"; the paper asks ChatGPT for rule 1, the suite's
   exact checks stand in):

   1. *no information gain*: the evolved instruction is the original, or an in-depth rewrite
      did not add an operation, or an in-breadth rewrite kept the original's task;
   2. *the teacher struggled to answer* (the paper: "sorry" in a short answer): the answer is
      empty or cut off at the length limit;
   3. *the answer has no content* (the paper: only punctuation and stop words; single letters
      are real answers on this suite, so: no letter or digit);
   4. *the rewrite copied the evolving prompt* (``deepen``/``widen``/``new``... in the text, the
      paper's "#Rewritten Prompt#") or is not a well-formed instruction at all.

   Rules are checked in the order 4, 1, 2, 3 (the answer is asked only for rewrites that pass
   4 and 1); the first that fires is counted. A failed instruction returns to the pool unchanged
   and is evolved again next round; a survivor replaces its original in the pool.
5. Train on the initial pool's answers plus every survivor of every round.

BibTeX: ``xu2024wizardlm``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from reference_impls.black_box.filters import count, response_problem, rouge_tokens
from reference_impls.black_box.instruction_following._bootstrap import (
    GenerationSettings,
    answer_instructions,
    bootstrap_instructions,
)
from reference_impls.black_box.pipeline import DistilledData, PipelineContext, TextPipeline
from reference_impls.core.recipe import Recipe
from reference_impls.core.sft import TrainingExample
from reference_impls.losses.numerics import check_unit_interval
from reference_impls.registry import register
from reference_impls.tasks import instructions as suite
from reference_impls.tasks.strings import Example
from reference_impls.teachers.text import Completion

IN_DEPTH, IN_BREADTH = "in-depth", "in-breadth"
# Words of the evolving prompts (the suite's meta-task heads); a rewrite that contains one copied
# its prompt instead of rewriting (rule 4; the paper's "#Rewritten Prompt#", "given prompt").
PROMPT_WORDS = frozenset({"deepen", "widen", "new", "judge", "fix", "explain", "brief"})
MAX_INSTRUCTION_TOKENS = 32  # a depth-3 instruction is at most 26 characters (+ end of sequence)

RULE_NO_GAIN = "1: no information gain"
RULE_STRUGGLED = "2: teacher struggled ({})"  # empty or truncated answer
RULE_NO_CONTENT = "3: answer without content"
RULE_COPIED = "4: copied the evolving prompt"
RULE_MALFORMED = "4: not an instruction"


def draw_evolutions(rng: random.Random, n: int, in_depth_share: float) -> list[str]:
    """One evolution kind per instruction: in-depth with probability ``in_depth_share``."""
    return [IN_DEPTH if rng.random() < in_depth_share else IN_BREADTH for _ in range(n)]


def evolution_prompt(instruction: Example, kind: str) -> str:
    """The teacher prompt that rewrites ``instruction`` in depth or in breadth."""
    if kind == IN_DEPTH:
        return suite.deepen_prompt(instruction.prompt)
    if kind == IN_BREADTH:
        return suite.widen_prompt(instruction.prompt)
    raise ValueError(f"evolution kind must be {IN_DEPTH!r} or {IN_BREADTH!r}, got {kind!r}")


def check_evolution(original: Example, kind: str, rewrite: Completion) -> tuple[Example | None, str | None]:
    """Elimination rules 4 and 1 on a rewrite: ``(evolved, None)`` or ``(None, rule)``."""
    text = rewrite.text.strip()
    if PROMPT_WORDS & set(rouge_tokens(text)):
        return None, RULE_COPIED
    evolved = suite.parse_instruction(text) if rewrite.finish_reason != "length" else None
    if evolved is None:
        return None, RULE_MALFORMED
    if evolved.prompt == original.prompt:
        return None, RULE_NO_GAIN
    if kind == IN_DEPTH and suite.depth_of(evolved) <= suite.depth_of(original):
        return None, RULE_NO_GAIN
    if kind == IN_BREADTH and evolved.task == original.task:
        return None, RULE_NO_GAIN
    return evolved, None


def check_answer(answer: Completion) -> str | None:
    """Elimination rules 2 and 3 on the teacher's answer to an evolved instruction, or ``None``."""
    problem = response_problem(answer)
    if problem in ("empty", "truncated"):
        return RULE_STRUGGLED.format(problem)
    if problem is not None:
        return RULE_NO_CONTENT
    return None


def evolve_round(
    context: PipelineContext,
    pool: Sequence[Example],
    kinds: Sequence[str],
    *,
    tag: str,
    temperature: float,
    top_p: float,
) -> tuple[list[Example], list[TrainingExample]]:
    """One round: rewrite every pool instruction with its evolution ``kinds[i]``, answer the
    rewrites, eliminate failures.

    Returns:
        The next pool (each survivor in place of its original, failures unchanged) and the
        survivors' training pairs.
    """
    stats = context.stats
    rewrites = context.ask(
        [evolution_prompt(e, k) for e, k in zip(pool, kinds, strict=True)],
        tag=tag,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=MAX_INSTRUCTION_TOKENS,
    )
    candidates: dict[int, Example] = {}
    for i, (original, kind, rewrite) in enumerate(zip(pool, kinds, rewrites, strict=True)):
        evolved, rule = check_evolution(original, kind, rewrite)
        if rule is not None:
            count(stats, f"evol-instruct: eliminated ({rule})")
        else:
            candidates[i] = evolved
    answers = context.ask(
        [e.prompt for e in candidates.values()], tag=f"{tag} answers", stop=(suite.TURN_SEPARATOR,)
    )
    next_pool, survivors = list(pool), []
    for (i, evolved), answer in zip(candidates.items(), answers, strict=True):
        rule = check_answer(answer)
        if rule is not None:
            count(stats, f"evol-instruct: eliminated ({rule})")
            continue
        next_pool[i] = evolved
        survivors.append(TrainingExample.single(evolved.prompt, answer.text.strip()))
        # Reported, never filtered on: the paper trains on the teacher's answers as they are.
        count(stats, "evol-instruct: evolved answers correct", answer.text.strip() in evolved.answers)
    return next_pool, survivors


@register("evol-instruct")
def evol_instruct_recipe(
    num_initial: int = 200,
    rounds: int = 4,
    in_depth_share: float = 0.8,
    temperature: float = 1.0,
    top_p: float = 0.95,
    prompt_instructions: int = 3,
    novelty_threshold: float = 0.7,
) -> Recipe:
    """Evol-Instruct: an Alpaca pool evolved for ``rounds`` rounds with elimination, all rounds mixed.

    Args:
        num_initial: Size of the initial pool $D^{(0)}$ (Alpaca's 52K in the paper, which grew to
            250K in 4 rounds; scaled so the final data is near the other pipelines' budget).
        rounds: Evolution rounds $M$ (4, §4.1 of the paper).
        in_depth_share: Probability of an in-depth rewrite (0.8: ``random.choice`` over four
            in-depth prompts and one in-breadth prompt, ``Evol_Instruct/main.py``).
        temperature: Sampling temperature of the rewrites (1, ``openai_access.py``).
        top_p: Nucleus mass of the rewrites (0.95, ``openai_access.py``).
        prompt_instructions: Seed demonstrations per request when building the Alpaca pool (3,
            Alpaca's ``generate_instruction.py``).
        novelty_threshold: ROUGE-L rejection threshold of the Alpaca pool (0.7, same script);
            the evolution itself has no ROUGE-L filter.
    """
    if num_initial < 1 or rounds < 0 or prompt_instructions < 1:
        raise ValueError(
            f"num_initial and prompt_instructions must be >= 1 and rounds >= 0, got num_initial="
            f"{num_initial}, prompt_instructions={prompt_instructions}, rounds={rounds}"
        )
    check_unit_interval("in_depth_share", in_depth_share)
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
    settings = GenerationSettings(
        human_demos=prompt_instructions,
        temperature=1.0,
        top_p=1.0,
        novelty_threshold=novelty_threshold,
    )

    def build(context: PipelineContext) -> DistilledData:
        initial = bootstrap_instructions(context, num_initial, settings, tag="alpaca pool")
        data = answer_instructions(context, initial, tag="alpaca pool answers")
        rng = random.Random(f"{context.config.seed}-evol-instruct")
        pool, evolved = list(initial), 0
        for round_index in range(rounds):
            kinds = draw_evolutions(rng, len(pool), in_depth_share)
            count(context.stats, f"evol-instruct: {IN_DEPTH} rewrites", kinds.count(IN_DEPTH))
            count(context.stats, f"evol-instruct: {IN_BREADTH} rewrites", kinds.count(IN_BREADTH))
            pool, survivors = evolve_round(
                context,
                pool,
                kinds,
                tag=f"evol-instruct round{round_index + 1}",
                temperature=temperature,
                top_p=top_p,
            )
            context.stats[f"evol-instruct: round {round_index + 1} survivors"] = len(survivors)
            data += survivors
            evolved += len(survivors)
        correct = context.stats.pop("evol-instruct: evolved answers correct", 0)
        context.stats["evol-instruct: evolved answers correct (share)"] = round(correct / max(1, evolved), 4)
        for example in data:
            parsed = suite.parse_instruction(example.segments[0][0])
            depth = suite.depth_of(parsed) if parsed else 0
            count(context.stats, f"training data: depth {depth}")
        return DistilledData(data)

    return Recipe(
        method_id="evol-instruct",
        data=TextPipeline(build),
        evaluation="instructions",
    )
