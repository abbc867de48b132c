"""The embedded character-level tokenizer, wrapped as a ``PreTrainedTokenizerFast``.

One token per character keeps the toy tasks learnable by very small models (reversing or
sorting a word is a per-character operation) and makes every model built on it share one
vocabulary, which token-level (same-vocabulary) distillation requires.

Cross-tokenizer methods (ULD, DSKD-CMA) need a *second*, different student vocabulary:
`build_pair_tokenizer` ("pair" in ``TOKENIZERS``) adds merged character pairs, the most frequent
bigrams of the task suite, on top of the same characters. The same text then splits into
different, mostly shorter, token sequences (``"copy"`` is ``co|py`` instead of ``c|o|p|y``).
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
# Everything the suite (and few-shot prompts, which use newlines) can produce.
CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " \n"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer: special tokens first (``<pad>`` = 0), then ``CHARACTERS``.

    Deterministic: the vocabulary is a fixed list, nothing is learned. Characters outside it map
    to ``<unk>``. Decoding concatenates characters without inserting spaces.
    """
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *CHARACTERS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every single character (newline included) becomes its own "word".
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return _wrap(backend)


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """The HF tokenizer around a `tokenizers` backend, with the suite's special tokens."""
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=256,
    )


# The pair vocabulary: this many merges, counted on this many training examples of the suite.
PAIR_MERGES = 128
_PAIR_CORPUS_SIZE = 2000


def suite_bigrams(n_examples: int = _PAIR_CORPUS_SIZE, n_merges: int = PAIR_MERGES) -> list[str]:
    """The ``n_merges`` most frequent character pairs of the suite's training text, most frequent first.

    Prompts and responses are counted separately (``encode_pair`` tokenizes them separately, so
    a pair across the boundary never occurs). Ties are broken alphabetically, so the list is
    deterministic; it changes when the suite does (``SUITE_VERSION``).
    """
    from reference_impls.tasks.strings import (
        make_split,
    )  # local import: tasks is data, the tokenizer must not depend on it at import

    counts: Counter[str] = Counter()
    for example in make_split("train", n_examples):
        for text in (example.prompt, example.response):
            counts.update(text[i : i + 2] for i in range(len(text) - 1))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [pair for pair, _ in ranked[:n_merges]]


def build_pair_tokenizer(merges: Sequence[str] | None = None) -> PreTrainedTokenizerFast:
    """A BPE tokenizer with single-character merges: ``CHARACTERS`` plus character pairs.

    The vocabulary is the character tokenizer's (same special tokens, ``<pad>`` = 0, same
    character ids) followed by one token per merged pair; merges are applied in the order given
    (the first has the highest priority), so ``"abc"`` with merges ``["bc", "ab"]`` is ``a|bc``.
    Used as the *student* vocabulary of the cross-tokenizer methods.

    Args:
        merges: Two-character strings of ``CHARACTERS``, highest priority first; ``None`` uses
            `suite_bigrams` (the suite's most frequent pairs).

    Raises:
        ValueError: A merge is not two characters of ``CHARACTERS``, or is repeated.
    """
    merges = list(suite_bigrams() if merges is None else merges)
    bad = [m for m in merges if len(m) != 2 or any(c not in CHARACTERS for c in m)]
    if bad:
        raise ValueError(f"merges must be two characters of CHARACTERS each, got {bad[:5]}")
    if len(set(merges)) != len(merges):
        raise ValueError("merges must not repeat a pair")
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *CHARACTERS, *merges])}
    # No pre-tokenizer: the whole text is one "word", so pairs merge across spaces too.
    return _wrap(Tokenizer(models.BPE(vocab=vocab, merges=[(m[0], m[1]) for m in merges], unk_token=UNK)))


MASK = "<mask>"


def build_encoder_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer of the encoder (BERT-era) models: `build_tokenizer`'s vocabulary
    plus ``<mask>`` (id 100) for masked-LM training. ``<bos>`` serves as [CLS], ``<eos>`` as [SEP]."""
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *CHARACTERS, MASK])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer = _wrap(backend)
    tokenizer.add_special_tokens({"mask_token": MASK, "cls_token": BOS, "sep_token": EOS})
    return tokenizer


# Named tokenizers: "char" (teachers and same-vocabulary students), "pair" (cross-tokenizer students).
TOKENIZERS: dict[str, Callable[[], PreTrainedTokenizerFast]] = {
    "char": build_tokenizer,
    "pair": build_pair_tokenizer,
}


# ------------------------------------------------------------------- how sequences are encoded
# One convention for every tokenizer (embedded or from the hub): [bos] prompt response [eos],
# with prompt and response tokenized separately so the prompt/response boundary is exact.


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of ``prompt``, preceded by BOS when the tokenizer has one."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + list(ids)


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str
) -> tuple[list[int], list[int]]:
    """Ids of ``[bos] prompt response [eos]`` and labels that are -100 on the prompt part.

    Labels are aligned with ``input_ids`` (not shifted); the training loop shifts once.

    Raises:
        ValueError: If the tokenizer has no EOS token (generation could never stop).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos_token — set one before training")
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = [*tokenizer(response, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id: the pad token, else EOS (many hub tokenizers define no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
