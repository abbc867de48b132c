"""The embedded character-level tokenizer, wrapped as a ``PreTrainedTokenizerFast``.

One token per character keeps the toy tasks learnable by very small models (reversing or
sorting a word is a per-character operation) and makes every model built on it share one
vocabulary, which token-level (same-vocabulary) distillation requires.

Cross-tokenizer methods (ULD, DSKD) need a *second*, different student vocabulary. It belongs
here as another builder next to `build_tokenizer` (e.g. ``build_student_bpe_tokenizer``,
a small BPE trained on the suite that merges frequent bigrams) registered in ``TOKENIZERS``.
"""

from __future__ import annotations

import string
from collections.abc import Callable

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
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=256,
    )


# Named tokenizers; a cross-tokenizer student vocabulary is added here later.
TOKENIZERS: dict[str, Callable[[], PreTrainedTokenizerFast]] = {"char": build_tokenizer}


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
