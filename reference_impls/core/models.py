"""Tiny models built from transformers configs: a decoder teacher and student, an encoder.

The sizes are chosen for a 2-core CPU: the teacher (3 layers, width 128, ~0.5M parameters)
learns the suite within the 2-minute build budget; the student (2 layers, width 64, ~0.1M) is
small enough that it cannot match the teacher with the default budget, so distillation has room
to help. Eager attention is used because it is faster than SDPA at these sizes on CPU.

The student comes in two families of the same depth and width (`STUDENT_FAMILIES`), to test the
survey's finding that the best distillation algorithm changes across model families: ``llama``
(RoPE, RMSNorm, gated SiLU MLP, no biases) and ``gpt2`` (learned absolute positions, LayerNorm,
GELU MLP, biases). The GPT-2 config turns its dropout off, as the Llama one has none: the
families then differ by architecture, not by regularisation.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

# Long enough for few-shot prompts (k demonstrations of <= 40 characters each).
MAX_POSITIONS = 256


def _decoder_config(
    tokenizer: PreTrainedTokenizerBase, *, layers: int, width: int, heads: int, ffn: int
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )


def build_teacher_config(tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The embedded teacher: a 3-layer, 128-wide Llama-style decoder."""
    return _decoder_config(tokenizer, layers=3, width=128, heads=4, ffn=256)


def _gpt2_config(tokenizer: PreTrainedTokenizerBase, *, layers: int, width: int, heads: int, ffn: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=width,
        n_inner=ffn,
        n_layer=layers,
        n_head=heads,
        n_positions=MAX_POSITIONS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )


# Student family → config builder; every family has the same depth, width and MLP size.
STUDENT_FAMILIES = {"llama": _decoder_config, "gpt2": _gpt2_config}


def build_student_config(tokenizer: PreTrainedTokenizerBase, family: str = "llama") -> PretrainedConfig:
    """The embedded student: a 2-layer, 64-wide decoder (about a quarter of the teacher) of ``family``.

    Raises:
        ValueError: For a family not in `STUDENT_FAMILIES`.
    """
    if family not in STUDENT_FAMILIES:
        raise ValueError(f"unknown student family {family!r}: choose one of {', '.join(STUDENT_FAMILIES)}")
    return STUDENT_FAMILIES[family](tokenizer, layers=2, width=64, heads=2, ffn=256)


def build_decoder(config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """A freshly initialised decoder; the same ``(config, seed)`` gives the same weights."""
    # HF initialisers draw from the global RNG: seed it inside a fork so the caller's RNG state
    # is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    # Generation reads its defaults here: greedy, stop at EOS, pad with <pad>.
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def build_student(tokenizer: PreTrainedTokenizerBase, seed: int, family: str = "llama") -> PreTrainedModel:
    """The embedded student of ``family``, initialised from ``seed`` (baseline and distilled share it)."""
    return build_decoder(build_student_config(tokenizer, family), seed)


def build_encoder_config(tokenizer: PreTrainedTokenizerBase, *, num_labels: int, teacher: bool) -> BertConfig:
    """A tiny BERT config for encoder (BERT-era) methods over the suite's classification view.

    Args:
        tokenizer: The tokenizer whose vocabulary the encoder embeds.
        num_labels: Number of classes (``len(TASK_NAMES)`` for the task-id view).
        teacher: 4 layers x 128 wide if True, else 2 layers x 64 wide; both with 4 heads, which
            TinyBERT's and MiniLM's attention losses need (they pair heads one to one).
    """
    layers, width, heads = (4, 128, 4) if teacher else (2, 64, 4)
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * width,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels,
        # No dropout, as in the decoders: the hint losses read attention maps, which transformers
        # returns after attention dropout in train mode (their rows would no longer sum to 1).
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
