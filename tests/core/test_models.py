"""Tokenizer, tiny models, batching, generation and the training loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference_impls.core.generation import generate_responses
from reference_impls.core.models import (
    build_decoder,
    build_encoder_config,
    build_student,
    build_teacher_config,
    count_parameters,
)
from reference_impls.core.tokenizer import build_tokenizer, encode_pair, encode_prompt
from reference_impls.core.training import (
    collate,
    make_dataloader,
    next_token_view,
    train_student,
    warmup_cosine,
)
from reference_impls.tasks.strings import TASK_NAMES, make_split


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def private_ce(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor
) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(
        student_logits.flatten(0, 1), labels.flatten(), ignore_index=-100
    )


# ------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trip(tokenizer) -> None:
    for example in make_split("train", 70):
        text = example.prompt + example.response
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)  # one token per character
        assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer("a\nb  c", add_special_tokens=False)["input_ids"]) == "a\nb  c"


def test_tokenizer_is_deterministic_and_saveable(tokenizer, tmp_path: Path) -> None:
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded("rev: abc =")["input_ids"] == tokenizer("rev: abc =")["input_ids"]


def test_unknown_characters_map_to_unk(tokenizer) -> None:
    assert tokenizer("é", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_encode_pair_masks_the_prompt(tokenizer) -> None:
    ids, labels = encode_pair(tokenizer, "rev: ab =", "ba")
    prompt = encode_prompt(tokenizer, "rev: ab =")
    assert ids[: len(prompt)] == prompt and prompt[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id
    assert labels == [-100] * len(prompt) + ids[len(prompt) :]


# --------------------------------------------------------------------------------------- models


def test_model_sizes(tokenizer) -> None:
    teacher = build_decoder(build_teacher_config(tokenizer), seed=0)
    student = build_student(tokenizer, seed=0)
    assert count_parameters(student) * 3 < count_parameters(teacher)
    assert student.config.vocab_size == teacher.config.vocab_size == len(tokenizer)
    encoder = build_encoder_config(tokenizer, num_labels=len(TASK_NAMES), teacher=False)
    assert encoder.num_labels == len(TASK_NAMES) and encoder.vocab_size == len(tokenizer)


def test_student_init_is_seeded_and_leaves_global_rng_alone(tokenizer) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = (build_student(tokenizer, seed) for seed in (0, 0, 1))
    assert torch.equal(torch.rand(1), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


# ------------------------------------------------------------------------------------- batching


@pytest.mark.convention("causal-shift")
def test_collate_and_shift(tokenizer) -> None:
    rows = [encode_pair(tokenizer, "up: a =", "A"), encode_pair(tokenizer, "rev: abc =", "cba")]
    batch = collate(rows, pad=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() == len(rows[0][0])
    assert (batch["labels"][0, len(rows[0][0]) :] == -100).all()
    logits = torch.randn(2, batch["input_ids"].shape[1], 7)
    shifted_logits, shifted_labels = next_token_view(logits, batch["labels"])
    assert torch.equal(shifted_logits, logits[:, :-1]) and torch.equal(shifted_labels, batch["labels"][:, 1:])


def test_dataloader_order_depends_only_on_seed(tokenizer) -> None:
    examples = make_split("train", 40)
    prompts, responses = [e.prompt for e in examples], [e.response for e in examples]

    def first(seed: int) -> torch.Tensor:
        return next(iter(make_dataloader(tokenizer, prompts, responses, batch_size=8, seed=seed)))[
            "input_ids"
        ]

    assert torch.equal(first(0), first(0))
    assert not torch.equal(first(0), first(1))


def test_schedule_warms_up_then_decays() -> None:
    values = [warmup_cosine(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1, abs=0.01) and values[50] < values[10]


# ------------------------------------------------------------------------------------ generation


class _ConstantHead(torch.nn.Module):
    """An LM head that always prefers ``token``: makes generation's behaviour predictable."""

    def __init__(self, vocab: int, token: int) -> None:
        super().__init__()
        self.vocab, self.token = vocab, token

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.token] = 10.0
        return logits


def test_eos_at_first_step_gives_empty_string(tokenizer) -> None:
    model = build_student(tokenizer, seed=0)
    model.lm_head = _ConstantHead(len(tokenizer), tokenizer.eos_token_id)
    assert generate_responses(model, tokenizer, ["rev: ab =", "copy: abcd ="]) == ["", ""]


def test_max_new_tokens_bounds_the_response(tokenizer) -> None:
    model = build_student(tokenizer, seed=0)
    model.lm_head = _ConstantHead(len(tokenizer), tokenizer.convert_tokens_to_ids("x"))
    assert generate_responses(model, tokenizer, ["a =", "longer prompt ="], max_new_tokens=5) == ["xxxxx"] * 2


def test_batched_generation_matches_one_by_one(tokenizer) -> None:
    # Left padding must not change what a row generates.
    model = build_student(tokenizer, seed=0)
    prompts = [e.prompt for e in make_split("test", 6)]
    batched = generate_responses(model, tokenizer, prompts, max_new_tokens=6)
    single = [generate_responses(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single


# ---------------------------------------------------------------------------------- training loop


def test_training_reduces_the_loss_and_is_deterministic(tokenizer) -> None:
    examples = make_split("train", 64)
    prompts, responses = [e.prompt for e in examples], [e.response for e in examples]

    def run() -> list[float]:
        student = build_student(tokenizer, seed=0)
        batches = make_dataloader(tokenizer, prompts, responses, batch_size=16, seed=0)
        return train_student(student, batches, private_ce, 30, None, progress=False)

    losses = run()
    assert len(losses) == 30
    assert sum(losses[-5:]) < sum(losses[:5])
    assert losses == run()


def test_objective_receives_aligned_tensors(tokenizer) -> None:
    from accelerate import Accelerator

    examples = make_split("train", 8)
    batches = make_dataloader(
        tokenizer, [e.prompt for e in examples], [e.response for e in examples], batch_size=4
    )
    teacher = build_decoder(build_teacher_config(tokenizer), seed=1)
    seen = []

    def objective(
        student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor
    ) -> torch.Tensor:
        seen.append((student_logits.shape, teacher_logits.shape, labels.shape, teacher_logits.requires_grad))
        return private_ce(student_logits, teacher_logits, labels)

    student = build_student(tokenizer, seed=0)
    train_student(student, batches, objective, 2, Accelerator(cpu=True), teacher=teacher, progress=False)
    for student_shape, teacher_shape, label_shape, teacher_grad in seen:
        assert student_shape == teacher_shape and student_shape[:2] == label_shape
        assert student_shape[-1] == len(tokenizer) and not teacher_grad


def test_saved_model_reloads_identically(tokenizer, tmp_path: Path) -> None:
    model = build_student(tokenizer, seed=0)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([encode_prompt(tokenizer, "rev: abc =")])
    assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-5)


def test_student_families_share_depth_and_width_without_dropout():
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    from reference_impls.core.models import STUDENT_FAMILIES, build_student_config

    tokenizer = build_tokenizer()
    llama, gpt2 = build_student(tokenizer, 0, "llama"), build_student(tokenizer, 0, "gpt2")
    assert isinstance(llama, LlamaForCausalLM) and isinstance(gpt2, GPT2LMHeadModel)
    assert (gpt2.config.n_layer, gpt2.config.n_embd) == (llama.config.num_hidden_layers, llama.config.hidden_size)
    assert gpt2.config.resid_pdrop == gpt2.config.embd_pdrop == gpt2.config.attn_pdrop == 0.0
    # Same seed, same weights: the family's student is reproducible like the default one.
    again = build_student(tokenizer, 0, "gpt2")
    assert all(torch.equal(a, b) for a, b in zip(gpt2.state_dict().values(), again.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="llama, gpt2"):
        build_student_config(tokenizer, "opt")
    assert set(STUDENT_FAMILIES) == {"llama", "gpt2"}


def test_gpt2_students_decode_left_padded_batches_like_single_prompts():
    tokenizer = build_tokenizer()
    model = build_student(tokenizer, 0, "gpt2").eval()
    with torch.no_grad():  # learned positions that matter: a wrong position id changes the output
        torch.nn.init.normal_(model.transformer.wpe.weight, std=1.0)
        model.get_input_embeddings().weight.mul_(8)
    prompts = ["rev: abc =", "copy: abcdefgh =", "up: xy ="]
    batched = generate_responses(model, tokenizer, prompts, max_new_tokens=6)
    assert batched == [generate_responses(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
