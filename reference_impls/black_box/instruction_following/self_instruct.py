r"""Self-Instruct (Wang et al., ACL 2023): bootstrap instruction data from a handful of seed tasks.

The generator is shown a few instructions from a growing pool (human seeds mixed with its own
earlier generations), writes a new one, and the new instruction enters the pool only if it is
well-formed and novel: its ROUGE-L F1 against every pooled instruction is at most 0.7. Instances
(inputs and outputs) are then generated for each kept instruction, and a model is fine-tuned on
the result with ordinary cross-entropy,

$$\mathcal{L} = -\sum_{(x, y)\in\mathcal{D}_{\text{gen}}} \log q_\theta(y\mid x).$$

Algorithm (§2 of the paper; ``bootstrap_instructions.py``):

1. Pool ← the seed tasks (175 in the paper; ``seed_tasks`` here).
2. Repeat until the pool holds the target number of instructions:
   a. prompt the generator with 8 pooled instructions, 6 human + 2 generated (3 + 1 here: the
      tiny teacher was trained on up to 4 demonstrations);
   b. sample a new instruction (temperature 0.7, top-p 0.5 in the script);
   c. drop malformed generations, and those with ROUGE-L > 0.7 to any pooled instruction;
   d. add the survivors to the pool.
3. Generate instances: ``instances_per_instruction`` more inputs of each kept task (by asking the
   generator for new instructions with that task alone as the demonstration), then its answers.
4. Fine-tune on (instruction, answer) pairs.

The paper fine-tunes the generator itself (GPT-3 on GPT-3's data); here, as in the distillation
reading of the survey, the embedded student learns from the teacher's data.
BibTeX: ``wang2023selfinstruct``.
"""

from __future__ import annotations

from reference_impls.black_box.filters import count
from reference_impls.black_box.instruction_following._bootstrap import (
    GenerationSettings,
    answer_instructions,
    bootstrap_instructions,
)
from reference_impls.black_box.pipeline import DistilledData, PipelineContext, TextPipeline
from reference_impls.core.recipe import Recipe
from reference_impls.registry import register
from reference_impls.tasks import instructions as suite


@register("self-instruct")
def self_instruct_recipe(
    num_instructions: int = 600,
    human_demos: int = 3,
    machine_demos: int = 1,
    temperature: float = 0.7,
    top_p: float = 0.5,
    novelty_threshold: float = 0.7,
    instances_per_instruction: int = 1,
) -> Recipe:
    """Self-Instruct's bootstrap with ROUGE-L novelty filtering, then SFT on the teacher's answers.

    Args:
        num_instructions: Instructions to keep (52K in the paper; scaled to the embedded budget).
        human_demos: Seed tasks per generation prompt (6 of 8 in the paper, scaled to 3 of 4).
        machine_demos: Generated instructions per prompt (2 of 8 in the paper, 1 of 4 here).
        temperature: Sampling temperature of instruction generation (0.7, ``bootstrap_instructions.py``).
        top_p: Nucleus mass of instruction generation (0.5, same script).
        novelty_threshold: Keep an instruction only if its ROUGE-L to the pool is at most this (0.7, §2.3).
        instances_per_instruction: Extra instances (new inputs) generated per kept instruction.
    """
    settings = GenerationSettings(
        human_demos=human_demos,
        machine_demos=machine_demos,
        temperature=temperature,
        top_p=top_p,
        novelty_threshold=novelty_threshold,
    )
    if num_instructions < 1 or instances_per_instruction < 0:
        raise ValueError("num_instructions must be >= 1 and instances_per_instruction >= 0")

    def build(context: PipelineContext) -> DistilledData:
        instructions = bootstrap_instructions(context, num_instructions, settings, tag="self-instruct")
        instances = generate_instances(context, instructions, instances_per_instruction, temperature, top_p)
        examples = answer_instructions(context, instructions + instances, tag="self-instruct answers")
        return DistilledData(examples)

    return Recipe(
        method_id="self-instruct",
        data=TextPipeline(build),
        evaluation="instructions",
    )


def generate_instances(
    context: PipelineContext, instructions: list, per_instruction: int, temperature: float, top_p: float
) -> list:
    """New inputs for each kept task: the generator is shown that instruction alone and asked for
    another of the same kind; a generation counts only if it is well-formed and of the same task."""
    if per_instruction == 0:
        return []
    prompts = [suite.new_instruction_prompt([e.prompt]) for e in instructions for _ in range(per_instruction)]
    tasks = [e.task for e in instructions for _ in range(per_instruction)]
    completions = context.ask(
        prompts, tag="self-instruct instances", temperature=temperature, top_p=top_p, max_new_tokens=24
    )
    instances, seen = [], {e.prompt for e in instructions}
    for task, completion in zip(tasks, completions, strict=True):
        parsed = suite.parse_instruction(completion.text)
        if parsed is None or parsed.task != task or parsed.prompt in seen:
            count(context.stats, "self-instruct instances: dropped")
            continue
        seen.add(parsed.prompt)
        instances.append(parsed)
    context.stats["self-instruct instances: kept"] = len(instances)
    return instances
