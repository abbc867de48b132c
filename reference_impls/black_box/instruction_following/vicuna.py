r"""Vicuna (Chiang et al., LMSYS 2023): distil a chat teacher through multi-turn conversations.

Vicuna fine-tunes LLaMA on about 70K conversations that users had with ChatGPT and shared on
ShareGPT: the *user* turns are written by people, every *assistant* turn by the teacher, which
saw the conversation so far when it answered. FastChat cleans the dump (drops conversations it
cannot convert or that are too short), splits conversations longer than the context into pieces,
and trains with the loss on the assistant turns only — sequence-level KD with text-only access,
conditioned on the dialogue history $h_{<t}$:

$$\mathcal{L} = -\sum_{t} \log q_\theta\big(a_t \mid h_{<t}, u_t\big),\qquad
h_{<t} = (u_1, a_1, \dots, u_{t-1}, a_{t-1}).$$

Algorithm (LMSYS blog, 30 Mar 2023; FastChat ``fastchat/data``, ``fastchat/train/train.py``):

1. User side: conversations of human instructions. ShareGPT stands in as the suite's training
   conversations (`suite.make_conversations`, 2-3 turns): people write the user turns, so the
   human distribution is the faithful source; its reference answers are discarded (they only
   measure how often the teacher is right, ``teacher answers correct``).
2. Assistant side: the teacher answers turn by turn, each turn asked with the conversation so
   far, *its own* earlier answers included (`suite.conversation_prompt`), greedy, stopped at the
   end of a turn.
3. Clean: a conversation with an unusable assistant turn (empty, cut off at the length limit, no
   content, or running into the next turn) is dropped whole, as ``clean_sharegpt.py`` drops a
   sample when one message fails; its later turns are never asked.
4. Split (``split_long_conversation.py``): whole turns are packed greedily into pieces of at most
   ``max_length`` tokens; each piece is a training example starting with a user turn, and a
   turn that alone exceeds ``max_length`` is dropped.
5. Fine-tune with the loss on assistant turns (and their end-of-turn separator and the final
   EOS) only; ``loss_on="all"`` supervises the user turns too (the ablation).

BibTeX: ``chiang2023vicuna``.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from reference_impls.black_box.filters import count, response_problem
from reference_impls.black_box.pipeline import DistilledData, PipelineContext, TextPipeline
from reference_impls.core.recipe import Recipe
from reference_impls.core.sft import TrainingExample, encode_example
from reference_impls.registry import register
from reference_impls.tasks import instructions as suite
from reference_impls.teachers.text import Completion

Turn = tuple[str, str]  # (user instruction, assistant response)
LOSS_ON = ("assistant", "all")
MAX_TURNS = 6  # the embedded teacher saw at most 3; longer conversations only test its limits


def assistant_turn_problem(completion: Completion) -> str | None:
    """Why a teacher turn cannot be trained on, or ``None``: `response_problem`'s checks, plus
    ``"runs into the next turn"`` when the text crosses a turn separator (a server that ignored
    the stop string and began writing the user's next turn)."""
    problem = response_problem(completion)
    if problem is None and suite.TURN_SEPARATOR in completion.text.strip():
        return "runs into the next turn"
    return problem


def collect_conversations(
    context: PipelineContext, user_turns: Sequence[Sequence[str]], *, tag: str = "vicuna"
) -> list[list[Turn] | None]:
    """Have the teacher answer every user turn, turn by turn, with the conversation so far.

    Turn ``t`` of all surviving conversations is asked in one batch; its prompt holds the user
    turns and the teacher's own answers of turns ``1..t-1``. A conversation whose assistant turn
    is unusable is dropped (counted by reason) and not asked further.

    Returns:
        One entry per input conversation: its turns ``[(user, assistant), ...]``, or ``None``
        if it was dropped.
    """
    histories: list[list[Turn]] = [[] for _ in user_turns]
    alive = [bool(turns) for turns in user_turns]
    for t in range(max((len(turns) for turns in user_turns), default=0)):
        asking = [i for i, turns in enumerate(user_turns) if alive[i] and t < len(turns)]
        prompts = [suite.conversation_prompt(histories[i], user_turns[i][t]) for i in asking]
        completions = context.ask(prompts, tag=f"{tag} turn {t + 1}", stop=(suite.TURN_SEPARATOR,))
        for i, completion in zip(asking, completions, strict=True):
            problem = assistant_turn_problem(completion)
            if problem is not None:
                alive[i] = False
                count(context.stats, f"{tag}: conversations dropped ({problem} assistant turn)")
                continue
            histories[i].append((user_turns[i][t], completion.text.strip()))
    return [history if ok else None for history, ok in zip(histories, alive, strict=True)]


def split_conversation(
    turns: Sequence[Turn], tokenizer: PreTrainedTokenizerBase, max_length: int, *, loss_on: str = "assistant"
) -> tuple[list[TrainingExample], int]:
    """Pack whole turns greedily into training examples of at most ``max_length`` tokens (BOS and
    EOS included), as FastChat's ``split_long_conversation.py`` does (whose loop also loses the
    last turn when that turn opens a new piece; here it is kept).

    Returns:
        The pieces, and how many turns were dropped for exceeding ``max_length`` on their own.
    """

    def length(piece: Sequence[Turn]) -> int:
        return len(encode_example(tokenizer, TrainingExample.conversation(piece, loss_on=loss_on))[0])

    pieces: list[list[Turn]] = []
    piece: list[Turn] = []
    too_long = 0
    for turn in turns:
        if length([*piece, turn]) <= max_length:
            piece.append(turn)
            continue
        if piece:
            pieces.append(piece)
        piece = [turn] if length([turn]) <= max_length else []
        too_long += not piece
    if piece:
        pieces.append(piece)
    return [TrainingExample.conversation(p, loss_on=loss_on) for p in pieces], too_long


@register("vicuna")
def vicuna_recipe(
    num_conversations: int = 600,
    min_turns: int = 2,
    max_turns: int = 3,
    max_length: int = 256,
    loss_on: str = "assistant",
) -> Recipe:
    """Multi-turn conversation distillation: human user turns, teacher assistant turns, the loss
    on the assistant turns only.

    Args:
        num_conversations: User-side conversations (~70K ShareGPT conversations in the blog;
            scaled to the embedded budget, the size of Alpaca's run here).
        min_turns: Fewest user turns per conversation (the suite's conversations: 2).
        max_turns: Most user turns per conversation (the suite's conversations: 3; at most 6).
        max_length: Tokens per training piece; longer conversations are split (FastChat
            ``split_long_conversation.py --max-length 2048``, Vicuna's context; here the embedded
            student's 256 positions).
        loss_on: ``"assistant"``: loss on assistant turns only (the blog: "compute the
            fine-tuning loss solely on the chatbot's output"; FastChat masks user turns);
            ``"all"``: every token (ablation).
    """
    if num_conversations < 1:
        raise ValueError(f"num_conversations must be >= 1, got {num_conversations}")
    if not 1 <= min_turns <= max_turns <= MAX_TURNS:
        raise ValueError(
            f"min_turns and max_turns must satisfy 1 <= min_turns <= max_turns <= {MAX_TURNS}, "
            f"got {min_turns} and {max_turns}"
        )
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8 tokens, got {max_length}")
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")

    def build(context: PipelineContext) -> DistilledData:
        stats = context.stats
        users = suite.make_conversations(
            "train", num_conversations, seed=context.config.seed, turns=(min_turns, max_turns)
        )
        collected = collect_conversations(context, [[u for u, _ in c.turns] for c in users])
        kept = [(turns, c.answers) for turns, c in zip(collected, users, strict=True) if turns]
        stats["vicuna: conversations kept"] = len(kept)
        # How often the kept assistant turns are right: reported, never used to filter.
        graded = [a in valid for turns, answers in kept for (_, a), valid in zip(turns, answers, strict=True)]
        stats["vicuna: teacher answers correct"] = round(sum(graded) / max(1, len(graded)), 4)
        examples: list[TrainingExample] = []
        for turns, _ in kept:
            pieces, too_long = split_conversation(turns, context.tokenizer, max_length, loss_on=loss_on)
            count(stats, "vicuna: turns dropped (longer than max_length)", too_long)
            count(stats, "vicuna: conversations split", len(pieces) > 1)
            examples += pieces
        return DistilledData(examples)

    return Recipe(
        method_id="vicuna",
        data=TextPipeline(build),
        evaluation="conversations",
    )
