r"""Orca (Mukherjee et al., 2023): explanation tuning — the teacher explains, the student imitates.

Imitation data made of short answers teaches a student the teacher's style, not how it reached
the answer. Orca pairs each zero-shot FLAN-v2 query $x$ with a *system message* $s$ that asks for
step-by-step reasoning or an explanation, has the teacher answer under it, and fine-tunes the
student on the explanations with the system message kept in the prompt:

$$\mathcal{L} = -\sum_{(s, x, y)} \log q_\theta\big(y \mid s, x\big),\qquad y \sim p_{\text{teacher}}(\cdot \mid s, x).$$

Algorithm (§3 of the paper: Table 2 lists the 16 system messages, Figure 6 which of them each
FLAN sub-collection draws from, as reproduced in OpenOrca's generation code):

1. Queries: about 5M zero-shot queries sampled from FLAN-v2, a human-built task collection.
   The suite's training instructions stand in (`suite.make_instructions`, balanced over
   composition depths 1-3), not teacher-bootstrapped ones: FLAN's queries are not generated.
2. Pair each query with a system message. The paper's 16 include an empty one, answer-focused
   ones ("... follows instruction extremely well ...", "... helps people find information") and
   mostly explanation-eliciting ones ("... think step-by-step and justify your steps",
   "... explain like you are answering to a five year old", ...). The suite offers two, and the
   mapping is: the explanation-eliciting messages → ``explain`` (the steps, then ``=> answer``);
   the answer-only ones → ``brief``. ``system="explain"`` uses the first for every query,
   ``"brief"`` the second (the answers-only ablation), ``"mixed"`` draws one per query.
3. The teacher answers each (system message, query); greedy, stopped at the end of the turn.
4. Drop unusable answers: empty, cut off, no content (`response_problem`), and answers that
   break the format the system message asked for (`explanation_problem`). The sources consulted
   describe no such filter (ChatGPT and GPT-4 keep formats); the tiny teacher does not always,
   and a student trained on broken explanations learns the broken format. Wrong but well-formed answers are
   kept, as in the paper (their rate is reported: ``teacher answers correct``).
5. Fine-tune on (system message + query → teacher's response), the loss on the response only.

Evaluation: held-out instructions asked under the message the student was trained with
(``explain`` for ``"explain"`` and ``"mixed"``, ``brief`` for ``"brief"``), the answer after
``=>`` (or the whole output) scored exactly; asking the answers-only student for explanations
would score it on a prompt it never saw.

*Progressive learning* (ChatGPT's 5M answers first, then GPT-4's 1M) is not offered: it needs two
teachers of different strength, and a black-box run here has one. The same teacher sampled at a
higher temperature, or a two-stage schedule over subsets of one teacher's answers, would be a
different method under Orca's name.

BibTeX: ``mukherjee2023orca``.
"""

from __future__ import annotations

import random

from reference_impls.black_box.filters import count, response_problem
from reference_impls.black_box.pipeline import DistilledData, PipelineContext, TextPipeline
from reference_impls.core.recipe import Recipe
from reference_impls.core.sft import TrainingExample
from reference_impls.registry import register
from reference_impls.tasks import instructions as suite
from reference_impls.tasks.strings import Example, extract_answer

SYSTEM_CHOICES = ("explain", "brief", "mixed")
MARK = suite.ANSWER_MARK.strip()  # "=>": the explanation's steps come before it, the answer after


def explanation_problem(text: str, query: Example, system: str) -> str | None:
    """Why ``text`` breaks the format ``system`` asks for, or ``None`` if it is well-formed.

    Under ``explain`` a query with intermediate steps (composed operations, addition, counting)
    needs ``"<steps> => <answer>"``, and a composition of ``k`` operations exactly ``k``
    non-empty ``;``-separated steps (one result per operation); a one-step query may be answered
    directly. Under ``brief`` the answer must come alone. Either way at most one ``=>``, with
    text on both sides. Only the form is checked, never whether a step or the answer is right.
    """
    parts = text.split(MARK)
    if len(parts) > 2:
        return "repeated '=>'"
    if len(parts) == 2 and not (parts[0].strip() and parts[1].strip()):
        return "empty explanation or answer"
    if system == suite.BRIEF and len(parts) == 2:
        return "explanation not asked for"
    if system == suite.EXPLAIN and len(parts) == 1 and query.rationale:
        return "missing explanation"
    depth = suite.depth_of(query)
    if system == suite.EXPLAIN and len(parts) == 2 and depth > 1:
        steps = parts[0].split(";")
        if len(steps) != depth or not all(step.strip() for step in steps):
            return "one step per operation expected"
    return None


def explanation_data(
    context: PipelineContext, queries: list[Example], systems: list[str], *, tag: str = "orca"
) -> list[TrainingExample]:
    """The teacher's response to each (system message, query) as a training pair whose prompt
    keeps the system message; unusable and malformed responses are dropped (counted by reason)."""
    prompts = [
        suite.conversation_prompt([], q.prompt, system=s) for q, s in zip(queries, systems, strict=True)
    ]
    completions = context.ask(prompts, tag=f"{tag} answers", stop=(suite.TURN_SEPARATOR,))
    examples, correct = [], 0
    for prompt, query, system, completion in zip(prompts, queries, systems, completions, strict=True):
        text = completion.text.strip()
        problem = response_problem(completion) or explanation_problem(text, query, system)
        if problem is not None:
            count(context.stats, f"{tag}: dropped ({problem})")
            continue
        correct += extract_answer(text) in query.answers
        count(context.stats, f"{tag}: kept under '{system}'")
        examples.append(TrainingExample.single(prompt, text))
    context.stats[f"{tag}: teacher answers correct"] = round(correct / max(1, len(examples)), 4)
    return examples


@register("orca")
def orca_recipe(num_queries: int = 600, system: str = "explain") -> Recipe:
    """Explanation tuning: FLAN-style queries answered by the teacher under a system message.

    Args:
        num_queries: Queries sent to the teacher (~5M FLAN-v2 queries in the paper, §3.1;
            scaled to the embedded budget, the size of Alpaca's run here).
        system: ``"explain"``: every query under the step-by-step message (Orca's explanation
            tuning, Table 2's explanation-eliciting messages); ``"brief"``: answers only (the
            ablation: imitation without explanations); ``"mixed"``: one of the two per query,
            uniformly (one message drawn per query from a set, as in Figure 6).
    """
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    if system not in SYSTEM_CHOICES:
        raise ValueError(f"system must be one of {', '.join(SYSTEM_CHOICES)}, got {system!r}")

    def build(context: PipelineContext) -> DistilledData:
        queries = suite.make_instructions("train", num_queries, seed=context.config.seed)
        rng = random.Random(f"{context.config.seed}-orca-system")
        systems = [rng.choice(suite.SYSTEM_PROMPTS) if system == "mixed" else system for _ in queries]
        return DistilledData(explanation_data(context, queries, systems))

    return Recipe(
        method_id="orca",
        data=TextPipeline(build),
        # Each student is asked in the format it was trained on (the answer is read after
        # "=>" either way), so the answers-only ablation is not scored on a prompt it never saw.
        evaluation="brief" if system == suite.BRIEF else "explained",
    )
