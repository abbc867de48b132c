r"""Reflection-Tuning (Li et al., 2023; V1): recycle an instruction-tuning set with the teacher's reflection.

Instead of generating new data, an oracle model (ChatGPT) *reflects* on every pair of an existing
set: it critiques the instruction against explicit criteria (complexity of the topic, level of
detail and knowledge required, ambiguity, reasoning) and writes a new, harder instruction with
its answer; then it critiques that answer (helpfulness, relevance, accuracy, level of detail) and
writes a better one. The student is fine-tuned on the recycled pairs with plain cross-entropy,
$\mathcal{L} = -\sum \log q_\theta(y^{**} \mid x^{*})$; no pair is filtered.

Algorithm (``reflection_code/`` of tianyi-lab/Reflection_Tuning; README "Run Code"):

1. Start from an existing set $\mathcal{D}_0 = \{(x_0, y_0)\}$ (Alpaca's 52K in the paper). Here:
   the embedded Alpaca pipeline's data, built with the same requests so it comes from the cache.
2. Instruction reflection, greedy (``temperature=0.0``): the oracle writes $x^{*}$ and answers it,
   $y^{*}$. The suite's closest meta-task is ``deepen`` (the same input with one more operation: a
   harder instruction that stays relevant to the original); the teacher then answers $x^{*}$.
3. Response reflection on $(x^{*}, y^{*})$: the oracle writes a better answer $y^{**}$ (the
   suite's ``fix`` meta-task: a correct answer is repeated, a wrong one rewritten).
4. Extraction failures keep the original text: the postprocess scripts fall back to the original
   instruction or response when the extracted segment is empty or a placeholder. Here a
   malformed, unchanged or empty new instruction (or an unusable answer to it) keeps
   $(x_0, y_0)$, and an empty, truncated or content-free rewrite keeps the response.
5. Fine-tune the student on every recycled $(x^{*}, y^{**})$ (LLaMA-7B: batch 128, lr 2e-5,
   3 epochs; here the embedded budget shared by all methods).

Selective Reflection-Tuning (``selective-reflection-tuning``) adds the student's choice on top.
BibTeX: ``li2023reflection``.
"""

from __future__ import annotations

from collections.abc import Sequence

from reference_impls.black_box.filters import count, response_problem
from reference_impls.black_box.instruction_following.alpaca import alpaca_recipe
from reference_impls.black_box.pipeline import DistilledData, PipelineContext, TextPipeline
from reference_impls.core.recipe import Recipe
from reference_impls.core.sft import TrainingExample
from reference_impls.registry import register
from reference_impls.tasks import instructions as suite

Pair = tuple[str, str]  # (instruction prompt, response)
INSTRUCTION_OPERATIONS = {"deepen": suite.deepen_prompt, "widen": suite.widen_prompt}


def alpaca_pool(context: PipelineContext, num_instructions: int) -> list[Pair]:
    """The original set $\\mathcal{D}_0$: the Alpaca pipeline's (instruction, teacher answer) pairs,
    asked exactly as ``kdatlas run alpaca`` asks them (so a run of either fills the cache for both)."""
    examples = alpaca_recipe(num_instructions=num_instructions).data.build(context).examples
    return [(e.segments[0][0], e.segments[1][0]) for e in examples]


def reflect_instructions(
    context: PipelineContext, pairs: Sequence[Pair], *, operation: str = "deepen", temperature: float = 0.0
) -> list[Pair]:
    """Instruction reflection: a new instruction $x^{*}$ for each pair and the teacher's answer $y^{*}$.

    Falls back to the original pair (counted in ``context.stats``) when the teacher's instruction
    is unusable, malformed or unchanged, or its answer to it is unusable.
    """
    if operation not in INSTRUCTION_OPERATIONS:
        raise ValueError(
            f"instruction_operation must be one of {', '.join(INSTRUCTION_OPERATIONS)}, got {operation!r}"
        )
    stats = context.stats
    asked = context.ask(
        [INSTRUCTION_OPERATIONS[operation](x) for x, _ in pairs],
        tag=f"reflection: instruction ({operation})",
        temperature=temperature,
        max_new_tokens=24,
    )
    new_instructions: list[str | None] = []
    for (x, _), completion in zip(pairs, asked, strict=True):
        parsed = None if response_problem(completion) else suite.parse_instruction(completion.text)
        if parsed is None or parsed.prompt == x.strip():
            reason = "malformed" if parsed is None else "unchanged"
            count(stats, f"reflection: instruction kept original ({reason})")
            new_instructions.append(None)
        else:
            new_instructions.append(parsed.prompt)
    todo = [x for x in new_instructions if x is not None]
    answers = iter(
        context.ask(
            todo, tag="reflection: new answers", temperature=temperature, stop=(suite.TURN_SEPARATOR,)
        )
    )
    reflected = []
    for pair, x_new in zip(pairs, new_instructions, strict=True):
        if x_new is None:
            reflected.append(pair)
            continue
        answer = next(answers)
        if response_problem(answer) is not None:
            count(stats, f"reflection: instruction kept original (answer {response_problem(answer)})")
            reflected.append(pair)
        else:
            count(stats, "reflection: instruction rewritten")
            reflected.append((x_new, answer.text.strip()))
    return reflected


def reflect_responses(
    context: PipelineContext, pairs: Sequence[Pair], *, temperature: float = 0.0
) -> list[str]:
    """Response reflection: the teacher's better response to each pair (the original one when the
    rewrite is empty, truncated or has no content)."""
    asked = context.ask(
        [suite.fix_prompt(x, y) for x, y in pairs],
        tag="reflection: response",
        temperature=temperature,
        stop=(suite.TURN_SEPARATOR,),
    )
    responses = []
    for (_, y), completion in zip(pairs, asked, strict=True):
        problem = response_problem(completion)
        if problem is not None:
            count(context.stats, f"reflection: response kept original ({problem})")
            responses.append(y)
        else:
            better = completion.text.strip()
            count(context.stats, f"reflection: response {'unchanged' if better == y else 'rewritten'}")
            responses.append(better)
    return responses


def correct_rate(pairs: Sequence[Pair]) -> float:
    """Share of pairs whose response is an exact answer of their instruction (a report only:
    the suite's ground truth is never used to filter)."""
    hits = 0
    for x, y in pairs:
        parsed = suite.parse_instruction(x)
        hits += parsed is not None and y in parsed.answers
    return round(hits / max(1, len(pairs)), 4)


def check_reflection_options(num_instructions: int, instruction_operation: str, temperature: float) -> None:
    """The hyper-parameters V1 and V2 share.

    Raises:
        ValueError: Naming the parameter and its allowed values.
    """
    if num_instructions < 1:
        raise ValueError(f"num_instructions must be >= 1, got {num_instructions}")
    if instruction_operation not in INSTRUCTION_OPERATIONS:
        raise ValueError(
            f"instruction_operation must be one of {', '.join(INSTRUCTION_OPERATIONS)}, "
            f"got {instruction_operation!r}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


@register("reflection-tuning")
def reflection_tuning_recipe(
    num_instructions: int = 600,
    instruction_operation: str = "deepen",
    temperature: float = 0.0,
) -> Recipe:
    """Recycle the Alpaca pool with instruction and response reflection; train on every recycled pair.

    Args:
        num_instructions: Size of the original pool (Alpaca's 52K in the paper; the embedded
            Alpaca run's size, so the pool is shared through the cache).
        instruction_operation: The suite's stand-in for instruction reflection: ``"deepen"`` (a
            harder instruction on the same input, as the reflection prompt asks for a "complex and
            difficult" new instruction) or ``"widen"`` (a different instruction of the same depth).
        temperature: Sampling temperature of the reflection calls (0.0, ``reflect_response.py``).
    """
    check_reflection_options(num_instructions, instruction_operation, temperature)

    def build(context: PipelineContext) -> DistilledData:
        pool = alpaca_pool(context, num_instructions)
        new_pairs = reflect_instructions(
            context, pool, operation=instruction_operation, temperature=temperature
        )
        better = reflect_responses(context, new_pairs, temperature=temperature)
        recycled = [(x, y) for (x, _), y in zip(new_pairs, better, strict=True)]
        context.stats["pool: responses correct"] = correct_rate(pool)
        context.stats["recycled: responses correct"] = correct_rate(recycled)
        return DistilledData([TrainingExample.single(x, y) for x, y in recycled])

    return Recipe(
        method_id="reflection-tuning",
        data=TextPipeline(build),
        evaluation="instructions",
    )
