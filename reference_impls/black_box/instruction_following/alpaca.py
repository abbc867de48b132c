r"""Stanford Alpaca (Taori et al., 2023): Self-Instruct data written by a stronger teacher, then SFT.

Alpaca runs a streamlined Self-Instruct with ``text-davinci-003`` as the writer: every request
shows three seed tasks (seeds only, no generated ones), the teacher writes new instructions
(20 per call in the repository; one per call here, the tiny teacher writes one), near-duplicates
are dropped by the same ROUGE-L > 0.7 rule, and each kept instruction is answered by the teacher.
LLaMA-7B is then fine-tuned on the pairs with plain cross-entropy,
$\mathcal{L} = -\sum \log q_\theta(y\mid x)$ — sequence-level KD with text-only access.

Algorithm (``generate_instruction.py``, ``train.py``):

1. For each request, sample 3 seed tasks as demonstrations (``num_prompt_instructions = 3``).
2. Sample the teacher at temperature 1.0, top-p 1.0.
3. Drop malformed generations and those with ROUGE-L > 0.7 to any kept instruction or seed.
4. Answer every kept instruction with the teacher (one pass with the instruction in the
   repository; a second, greedy call here).
5. Fine-tune the student on the (instruction, answer) pairs (LLaMA: 3 epochs, lr 2e-5, batch
   128; here the embedded budget shared by all methods).

BibTeX: ``taori2023alpaca``.
"""

from __future__ import annotations

from reference_impls.black_box.instruction_following._bootstrap import (
    GenerationSettings,
    answer_instructions,
    bootstrap_instructions,
)
from reference_impls.black_box.pipeline import DistilledData, PipelineContext, TextPipeline
from reference_impls.core.recipe import Recipe
from reference_impls.registry import register
from reference_impls.tasks.strings import Example

# The tag of Alpaca's generation requests: another pipeline that calls `alpaca_instructions`
# with Alpaca's settings asks the same requests and reuses the cached generations.
ALPACA_TAG = "alpaca"


def alpaca_settings(
    prompt_instructions: int = 3, temperature: float = 1.0, top_p: float = 1.0, novelty_threshold: float = 0.7
) -> GenerationSettings:
    """Alpaca's generation: seed demonstrations only, sampled (``generate_instruction.py``)."""
    return GenerationSettings(
        human_demos=prompt_instructions,
        machine_demos=0,
        temperature=temperature,
        top_p=top_p,
        novelty_threshold=novelty_threshold,
    )


def alpaca_instructions(
    context: PipelineContext, num_instructions: int, settings: GenerationSettings
) -> list[Example]:
    """Alpaca's instruction generation (shared through the response cache under ``ALPACA_TAG``)."""
    return bootstrap_instructions(context, num_instructions, settings, tag=ALPACA_TAG)


@register("alpaca")
def alpaca_recipe(
    num_instructions: int = 600,
    prompt_instructions: int = 3,
    temperature: float = 1.0,
    top_p: float = 1.0,
    novelty_threshold: float = 0.7,
) -> Recipe:
    """Alpaca's generation (seed demonstrations only, sampled at T = 1) and SFT on the teacher's answers.

    Args:
        num_instructions: Instructions to keep (52K in Alpaca; scaled to the embedded budget).
        prompt_instructions: Seed tasks per request (``num_prompt_instructions=3``, ``generate_instruction.py``).
        temperature: Sampling temperature of generation (1.0, same script).
        top_p: Nucleus mass of generation (1.0, same script).
        novelty_threshold: ROUGE-L rejection threshold (0.7, same script).
    """
    if num_instructions < 1 or prompt_instructions < 1:
        raise ValueError("num_instructions and prompt_instructions must be >= 1")
    settings = alpaca_settings(prompt_instructions, temperature, top_p, novelty_threshold)

    def build(context: PipelineContext) -> DistilledData:
        instructions = alpaca_instructions(context, num_instructions, settings)
        return DistilledData(answer_instructions(context, instructions, tag="alpaca answers"))

    return Recipe(
        method_id="alpaca",
        data=TextPipeline(build),
        evaluation="instructions",
    )
