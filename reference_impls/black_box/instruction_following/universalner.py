r"""UniversalNER (Zhou et al., ICLR 2024): targeted distillation of one capability, open NER.

Instead of distilling general instruction following, UniversalNER distils a single broad
capability. Unlabelled passages (sampled from the Pile) are annotated by the teacher (ChatGPT)
*openly*: "list every entity with its type", no fixed label set. Each annotated passage becomes a
conversation that asks, type by type, for the mentions of that type; the answer is the teacher's
mention list. Because an open annotation only names types that *are* present, **negative
sampling** adds queries for types that are absent, answered by an empty list; the paper samples
the negative types from all types in the data by frequency, which beats uniform sampling and no
negatives at all (the paper's ablation, as summarised secondhand). The student (LLaMA) is fine-tuned on the conversations with the
loss on the assistant turns only,

$$\mathcal{L} = -\sum_{i=1}^{T} \log q_\theta(y_i \mid x_{\text{passage}}, t_1, y_1, \dots, t_i),$$

where $t_i$ is the $i$-th queried type and $y_i$ the teacher's mentions of it (empty for a
negative type).

Algorithm (the paper's data construction; the annotation prompt on the project page; FastChat-based
``src/train/fastchat/train/train.py`` of ``universal-ner/universal-ner``):

1. Sample passages from a broad unlabelled corpus (here: `suite.random_passage` from the
   training bucket only, so no test passage is ever annotated).
2. Ask the teacher for an open annotation of each passage (``ner: k3aZe =`` →
   ``digit 3; vowel a e; upper Z``); drop empty, truncated and unparsable output (counted).
3. Positive queries: one per type in the annotation, answered with the teacher's mentions, even
   when they are wrong (the teacher's labels are trained on as they are).
4. Negative queries: types absent from the annotation, answered ``none``
   (`suite.NO_ENTITY`); up to ``negatives_per_passage`` per passage, drawn without replacement
   with probability proportional to each type's frequency in all annotations (add-one
   smoothed). The suite has only 3 types, so with the default of 3 every absent type is queried
   and the frequency weights only matter for smaller values.
5. One conversation per passage: the queries in shuffled order (the training script shuffles
   them, "the answer should be order-insensitive to queries"), loss on the answers only. The
   paper's opening turn (``Text: <passage>`` / ``I've read this text.``) is left out: every
   suite query already carries its passage.

Evaluation: typed queries over held-out passages (``find vowel: k3aZe =``), positives and
negatives reported separately. BibTeX: ``zhou2024universalner``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from reference_impls.black_box.filters import count, response_problem
from reference_impls.black_box.pipeline import DistilledData, PipelineContext, TextPipeline
from reference_impls.core.recipe import Recipe
from reference_impls.core.sft import TrainingExample
from reference_impls.registry import register
from reference_impls.tasks import instructions as suite

Annotation = dict[str, list[str]]


def sample_passages(n: int, seed: int) -> list[str]:
    """``n`` distinct training passages (never from the test bucket), reproducible from ``seed``."""
    rng = random.Random(f"universalner-passages-{seed}")
    passages: list[str] = []
    seen: set[str] = set()
    while len(passages) < n:
        passage = suite.random_passage(rng)
        if suite.in_test_bucket(passage) or passage in seen:
            continue
        seen.add(passage)
        passages.append(passage)
    return passages


def type_frequencies(annotations: Sequence[Annotation]) -> Counter[str]:
    """How many annotations name each entity type (the weights of frequency-based sampling)."""
    return Counter(t for annotation in annotations for t in annotation)


def negative_types(
    annotation: Annotation, frequencies: Counter[str], k: int, rng: random.Random
) -> list[str]:
    """Up to ``k`` types absent from ``annotation``, drawn without replacement with probability
    proportional to ``frequency + 1`` (the paper's frequency-based negative sampling)."""
    absent = [t for t in suite.ENTITY_TYPES if t not in annotation]
    chosen: list[str] = []
    while absent and len(chosen) < k:
        pick = rng.choices(absent, weights=[frequencies[t] + 1 for t in absent])[0]
        absent.remove(pick)
        chosen.append(pick)
    return chosen


def passage_queries(
    passage: str,
    annotation: Annotation,
    frequencies: Counter[str],
    rng: random.Random,
    *,
    negatives_per_passage: int,
) -> list[tuple[str, str]]:
    """The typed queries of one annotated passage as ``(entity type, answer)`` pairs, shuffled:
    each annotated type with the teacher's mentions, and sampled absent types with ``none``."""
    queries = [(t, " ".join(annotation[t])) for t in annotation]
    negatives = negative_types(annotation, frequencies, negatives_per_passage, rng)
    queries += [(t, suite.NO_ENTITY) for t in negatives]
    rng.shuffle(queries)
    return queries


def annotate(context: PipelineContext, passages: Sequence[str]) -> list[tuple[str, Annotation]]:
    """The teacher's open annotation of each passage; unusable ones dropped and counted."""
    completions = context.ask(
        [suite.annotate_prompt(p) for p in passages],
        tag="universalner annotations",
        stop=(suite.TURN_SEPARATOR,),
    )
    stats, kept, exact = context.stats, [], 0
    for passage, completion in zip(passages, completions, strict=True):
        problem = response_problem(completion)
        annotation = suite.parse_annotation(completion.text) if problem is None else None
        if annotation is None:
            count(stats, f"annotations dropped ({problem or 'malformed'})")
            continue
        exact += annotation == suite.entities(passage)  # reported, never used to filter
        kept.append((passage, annotation))
    stats["annotations kept"] = len(kept)
    stats["teacher annotations exact"] = round(exact / max(1, len(kept)), 4)
    return kept


@register("universalner")
def universalner_recipe(
    num_passages: int = 500,
    negative_sampling: bool = True,
    negatives_per_passage: int = 3,
    conversation: bool = True,
) -> Recipe:
    """UniversalNER's targeted distillation: open annotation → typed queries with negative types.

    Args:
        num_passages: Passages annotated by the teacher (45,889 Pile passages in the paper's
            Pile-NER-type data; scaled to the embedded budget).
        negative_sampling: Add queries for absent types answered ``none`` (the paper's default;
            its ablation: no negatives < uniform < frequency-based sampling).
        negatives_per_passage: Most negative types per passage, drawn by frequency. The paper
            gives no count we could verify; 3 (all absent types of the suite's 3) keeps the
            positive/negative mix of the test queries.
        conversation: One multi-turn conversation per passage with the loss on the answers (the
            paper's conversation-style template); ``False`` trains each query as a single pair.
    """
    if num_passages < 1:
        raise ValueError(f"num_passages must be >= 1, got {num_passages}")
    if not 1 <= negatives_per_passage <= len(suite.ENTITY_TYPES):
        raise ValueError(
            f"negatives_per_passage must be in [1, {len(suite.ENTITY_TYPES)}], got {negatives_per_passage}"
        )

    def build(context: PipelineContext) -> DistilledData:
        passages = sample_passages(num_passages, context.config.seed)
        annotated = annotate(context, passages)
        frequencies = type_frequencies([a for _, a in annotated])
        rng = random.Random(f"universalner-queries-{context.config.seed}")
        k = negatives_per_passage if negative_sampling else 0
        examples: list[TrainingExample] = []
        stats = context.stats
        for passage, annotation in annotated:
            queries = passage_queries(passage, annotation, frequencies, rng, negatives_per_passage=k)
            if not queries:  # an empty annotation and no negatives: nothing to ask
                count(stats, "passages without queries")
                continue
            for entity_type, answer in queries:  # reported, never used to filter
                kind = "negative" if answer == suite.NO_ENTITY else "positive"
                count(stats, f"{kind} queries")
                correct = answer == suite.find_example(entity_type, passage).response
                count(stats, f"{kind} answers correct", int(correct))
            turns = [(suite.find_prompt(t, passage), answer) for t, answer in queries]
            if conversation:
                examples.append(TrainingExample.conversation(turns))
            else:
                examples += [TrainingExample.single(prompt, answer) for prompt, answer in turns]
        return DistilledData(examples)

    return Recipe(
        method_id="universalner",
        data=TextPipeline(build),
        evaluation="find",
    )
