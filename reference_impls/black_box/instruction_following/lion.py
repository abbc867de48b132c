r"""Lion (Jiang et al., EMNLP 2023): adversarial distillation of a closed-source model.

One black-box teacher plays three roles in a loop. As **teacher** it answers the Train Pool and the
student imitates it (SFT); as **referee** it scores the teacher's and the student's answers on the
Cache Pool, and instructions where the student lags are *hard*; as **generator** it writes new
instructions modelled on hard ones (and, for diversity, on easy ones), which join both pools.
Data thus concentrates where the student is weak, a min-max game played with text only:

$$d(x) = s_{\mathrm{T}}(x) - s_{\mathrm{S}}(x), \qquad x \text{ is hard} \iff d(x) \ge \tau = 1,$$

where $s_{\mathrm{T}}, s_{\mathrm{S}} \in [1, 10]$ are the referee's scores of the teacher's and the
student's answers (``discrimination.py``: the mean over both presentation orders).

Algorithm (§3 of the paper; README "Training Process"; ``src/*.py``):

1. Train Pool = Cache Pool ← Alpaca's instructions (here Alpaca's generation settings run on the
   seed tasks: 3 seed demonstrations, T = 1, ROUGE-L ≤ 0.7).
2. For each iteration:

   a. *Imitation*: the teacher answers the Train Pool; the student (the same model throughout)
      is fine-tuned on all the answers.
   b. *Discrimination*: teacher and student answer the Cache Pool; the referee scores both; split
      the Cache Pool into hard ($d \ge 1$) and easy.
   c. *Generation*: the generator writes new instructions from one sampled hard instruction per
      request (``prompt_hard.txt``; ``num_prompt_instructions=1``, T = 1, top-p 1), and as many
      from easy ones (README: 3000 of each per iteration); a new instruction is kept if it is
      well-formed and its ROUGE-L to every pooled instruction is at most 0.7
      (``generate_hard_instruction.py``); the kept ones join the Train and Cache Pools.
3. A closing imitation stage trains on the last generation too (52K + 3 × 6K = the paper's
   70K training instructions). The optimizer-step budget is split evenly over the imitation
   stages, so the total equals the other methods' budget.

**Referee.** The paper asks ChatGPT for two 1-10 scores, once in each order, and averages them.
``referee="exact"`` (default) lets the suite's exact answers stand in: 10 for an exactly right
answer, 1 otherwise (order plays no role). ``referee="teacher"`` asks the teacher itself, one
answer at a time, with `suite.judge_prompt` (``yes`` → 10, anything else → 1): the suite's judge
sees a single answer, so there is no pair whose order could be swapped; each answer is judged once.

BibTeX: ``jiang2023lion``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from reference_impls.black_box.filters import NoveltyFilter, count
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

REFEREES = ("exact", "teacher")
SCORE_RIGHT, SCORE_WRONG = 10.0, 1.0  # the ends of the paper's 1-10 referee scale


def split_steps(total: int, stages: int) -> list[int]:
    """``total`` optimizer steps split evenly over ``stages`` (the first stages take the remainder)."""
    if stages < 1 or total < stages:
        raise ValueError(f"need at least one step per imitation stage: {total} steps for {stages} stages")
    return [total // stages + (i < total % stages) for i in range(stages)]


def split_hard(
    items: Sequence[Example],
    teacher_scores: Sequence[float],
    student_scores: Sequence[float],
    threshold: float = 1.0,
) -> tuple[list[Example], list[Example]]:
    """``(hard, easy)``: hard where ``teacher_score - student_score >= threshold`` (``discrimination.py``)."""
    hard, easy = [], []
    for item, teacher, student in zip(items, teacher_scores, student_scores, strict=True):
        (hard if teacher - student >= threshold else easy).append(item)
    return hard, easy


def referee_scores(
    context: PipelineContext, items: Sequence[Example], answers: Sequence[str], referee: str, *, tag: str
) -> list[float]:
    """The referee's 1-10 score of each answer (see the module docstring for the two referees)."""
    if referee == "exact":
        return [
            SCORE_RIGHT if a.strip() in e.answers else SCORE_WRONG
            for e, a in zip(items, answers, strict=True)
        ]
    if referee != "teacher":
        raise ValueError(f"referee must be one of {', '.join(REFEREES)}, got {referee!r}")
    verdicts = context.ask(
        [suite.judge_prompt(e.prompt, a.strip()) for e, a in zip(items, answers, strict=True)],
        tag=tag,
        max_new_tokens=4,
    )
    scores = []
    for verdict in verdicts:
        text = verdict.text.strip()
        if text not in (suite.JUDGE_YES, suite.JUDGE_NO):
            count(context.stats, "referee: unreadable verdicts (scored 1)")
        scores.append(SCORE_RIGHT if text == suite.JUDGE_YES else SCORE_WRONG)
    return scores


def generate_from(
    context: PipelineContext,
    examples: Sequence[Example],
    target: int,
    settings: GenerationSettings,
    novelty: NoveltyFilter,
    *,
    tag: str,
) -> list[Example]:
    """Up to ``target`` new instructions written from sampled ``examples`` (one per request)."""
    if target == 0 or not examples:
        return []
    # Enough requests for the tiny teacher's rejects, without asking hundreds for a few kept.
    settings = replace(settings, requests_per_round=max(8, 2 * target), max_rounds=3)
    return bootstrap_instructions(context, target, settings, tag=tag, demo_pool=examples, novelty=novelty)


@register("lion")
def lion_recipe(
    num_initial: int = 450,
    iterations: int = 3,
    new_per_iteration: int = 50,
    hard_share: float = 0.5,
    referee: str = "exact",
    hard_threshold: float = 1.0,
    prompt_instructions: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    novelty_threshold: float = 0.7,
) -> Recipe:
    """Lion's imitation / discrimination / generation loop on one continually trained student.

    Args:
        num_initial: Initial Train (= Cache) Pool (Alpaca's 52K in the paper; scaled by 52:70 so
            that with the generated instructions the data is near the other pipelines' 600).
        iterations: Imitation-discrimination-generation iterations (3: 52K + 3 × 6K = the 70K
            training instructions of the paper and README; a closing imitation follows).
        new_per_iteration: New instructions per iteration (6K = 3000 hard + 3000 easy in the
            README's commands; scaled like ``num_initial``).
        hard_share: Share of the new instructions written from hard ones (0.5: 3000 of 6000); if
            one side is empty its share goes to the other.
        referee: ``"exact"`` (the suite's exact answers) or ``"teacher"`` (the teacher as judge).
        hard_threshold: Hard if teacher score − student score ≥ this (1, ``discrimination.py``).
        prompt_instructions: Sampled instructions per generation request (1,
            ``generate_hard_instruction.py``).
        temperature: Generation temperature (1.0, same script).
        top_p: Generation nucleus mass (1.0, same script).
        novelty_threshold: ROUGE-L rejection threshold against the pool (0.7, same script).
    """
    if num_initial < 1 or iterations < 0 or new_per_iteration < 0 or prompt_instructions < 1:
        raise ValueError(
            "num_initial and prompt_instructions must be >= 1, iterations and new_per_iteration >= 0; got "
            f"{num_initial}, {prompt_instructions}, {iterations}, {new_per_iteration}"
        )
    check_unit_interval("hard_share", hard_share)
    if referee not in REFEREES:
        raise ValueError(f"referee must be one of {', '.join(REFEREES)}, got {referee!r}")
    if not 0.0 < hard_threshold <= SCORE_RIGHT - SCORE_WRONG:
        raise ValueError(f"hard_threshold must be in (0, 9] (scores are 1-10), got {hard_threshold}")
    initial_settings = GenerationSettings(
        human_demos=3, temperature=1.0, top_p=1.0, novelty_threshold=novelty_threshold
    )
    settings = GenerationSettings(
        human_demos=prompt_instructions,
        temperature=temperature,
        top_p=top_p,
        novelty_threshold=novelty_threshold,
    )

    def build(context: PipelineContext) -> DistilledData:
        stats = context.stats
        novelty = NoveltyFilter([e.prompt for e in context.seeds], novelty_threshold)
        train_pool = bootstrap_instructions(
            context, num_initial, initial_settings, tag="alpaca pool", novelty=novelty
        )
        cache_pool = list(train_pool)
        data: list[TrainingExample] = []
        new = list(train_pool)
        student = context.new_student()
        curve: list[float] = []
        budget = split_steps(context.steps, iterations + 1)
        for stage, steps in enumerate(budget, start=1):
            # (a) Imitation: answer what joined the Train Pool, train on the whole pool.
            data += answer_instructions(context, new, tag=f"train pool answers (stage {stage})")
            curve += context.fine_tune(student, data, steps, f"Lion imitation stage {stage}")
            stats[f"stage {stage}: train pool"] = len(train_pool)
            if stage > iterations:
                break  # the closing imitation on the last generation
            # (b) Discrimination on the Cache Pool.
            prompts = [e.prompt for e in cache_pool]
            teacher = [c.text for c in context.ask(prompts, tag="cache pool", stop=(suite.TURN_SEPARATOR,))]
            student_text = context.student_answers(student, prompts)
            hard, easy = split_hard(
                cache_pool,
                referee_scores(context, cache_pool, teacher, referee, tag="referee"),
                referee_scores(context, cache_pool, student_text, referee, tag="referee"),
                hard_threshold,
            )
            stats[f"iteration {stage}: hard"], stats[f"iteration {stage}: easy"] = len(hard), len(easy)
            # (c) Generation from hard (and easy) instructions, deduplicated against the pool.
            n_hard = round(new_per_iteration * hard_share) if easy else new_per_iteration
            n_hard = n_hard if hard else 0
            new = generate_from(context, hard, n_hard, settings, novelty, tag=f"iteration {stage} from hard")
            new += generate_from(
                context,
                easy,
                new_per_iteration - n_hard,
                settings,
                novelty,
                tag=f"iteration {stage} from easy",
            )
            train_pool += new
            cache_pool += new
        stats["curve"] = curve
        return DistilledData(data, student=student)

    return Recipe(
        method_id="lion",
        data=TextPipeline(build),
        evaluation="instructions",
    )
