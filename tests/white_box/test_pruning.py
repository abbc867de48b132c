"""Structured pruning of a Llama teacher (MiniMA's student initialisation)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reference_impls.core.models import build_decoder, build_teacher_config, count_parameters
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.white_box.pruning import prune_llama

SCORES = ("magnitude", "activation", "gradient")


@pytest.fixture(scope="module")
def teacher() -> LlamaForCausalLM:
    return build_decoder(build_teacher_config(build_tokenizer()), seed=0).eval()


@pytest.fixture(scope="module")
def gqa_teacher() -> LlamaForCausalLM:
    """4 query heads sharing 2 key/value heads, untied head, biases on the attention maps."""
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return build_decoder(config, seed=1).eval()


def _batches(vocab: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0  # a padded row
    return [{"input_ids": ids, "attention_mask": mask}, {"input_ids": ids[:, :7]}]


def _sizes(model: LlamaForCausalLM, **changes: int) -> dict[str, int]:
    config = model.config
    sizes = {
        "num_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_heads": config.num_attention_heads,
        "num_kv_heads": config.num_key_value_heads,
    }
    return {**sizes, **changes}


def _prune(model: LlamaForCausalLM, importance: str = "magnitude", **changes: int) -> LlamaForCausalLM:
    batches = _batches(model.config.vocab_size)
    return prune_llama(model, **_sizes(model, **changes), importance=importance, calibration_batches=batches)


@torch.no_grad()
def _logits(model: LlamaForCausalLM, seed: int = 5) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(seed))
    return model(input_ids=ids).logits


# ------------------------------------------------------------------ nothing pruned → the teacher


@pytest.mark.parametrize("importance", SCORES)
def test_nothing_pruned_gives_the_teacher_exactly(teacher: LlamaForCausalLM, importance: str) -> None:
    student = _prune(teacher, importance)
    assert torch.equal(_logits(student), _logits(teacher))


def test_nothing_pruned_gqa_untied_biased(gqa_teacher: LlamaForCausalLM) -> None:
    assert torch.equal(_logits(_prune(gqa_teacher, "gradient")), _logits(gqa_teacher))


def test_teacher_left_unchanged(teacher: LlamaForCausalLM) -> None:
    before = copy.deepcopy(teacher.state_dict())
    _prune(teacher, "gradient", num_layers=2, hidden_size=64, num_heads=2, num_kv_heads=2)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())


# ------------------------------------------------------------------ independent equivalences


@pytest.mark.parametrize("importance", SCORES)
def test_pruning_ffn_channels_equals_zeroing_them(teacher: LlamaForCausalLM, importance: str) -> None:
    """An FFN channel only reaches the output through its column of down_proj."""
    student = _prune(teacher, importance, intermediate_size=100)
    reference = copy.deepcopy(teacher)
    for old, new in zip(reference.model.layers, student.model.layers, strict=True):
        kept = [
            row
            for row in range(256)
            if any(torch.equal(old.mlp.up_proj.weight[row], r) for r in new.mlp.up_proj.weight)
        ]
        assert len(kept) == 100
        dropped = sorted(set(range(256)) - set(kept))
        old.mlp.down_proj.weight.data[:, dropped] = 0
    torch.testing.assert_close(_logits(student), _logits(reference), rtol=1e-5, atol=1e-5)


def test_pruning_heads_equals_zeroing_them(gqa_teacher: LlamaForCausalLM) -> None:
    """A head only reaches the output through its columns of o_proj; GQA groups stay consistent."""
    student = _prune(gqa_teacher, "activation", num_heads=2, num_kv_heads=1)
    head_dim = gqa_teacher.config.head_dim
    reference = copy.deepcopy(gqa_teacher)
    for old, new in zip(reference.model.layers, student.model.layers, strict=True):
        q_old = old.self_attn.q_proj.weight.view(4, head_dim, -1)
        q_new = new.self_attn.q_proj.weight.view(2, head_dim, -1)
        kept = [h for h in range(4) if any(torch.equal(q_old[h], q) for q in q_new)]
        assert len(kept) == 2 and kept[0] // 2 == kept[1] // 2  # both from one key/value group
        k_old = old.self_attn.k_proj.weight.view(2, head_dim, -1)
        assert torch.equal(new.self_attn.k_proj.weight, k_old[kept[0] // 2])
        for head in set(range(4)) - set(kept):
            old.self_attn.o_proj.weight.data[:, head * head_dim : (head + 1) * head_dim] = 0
    torch.testing.assert_close(_logits(student), _logits(reference), rtol=1e-5, atol=1e-5)


def test_layers_come_off_both_ends(gqa_teacher: LlamaForCausalLM) -> None:
    """MiniMA's converter keeps the middle block (layers[d:-d]); an odd surplus comes off the top."""
    for keep, first in ((2, 1), (3, 0), (1, 1)):
        student = _prune(gqa_teacher, num_layers=keep)
        for offset, layer in enumerate(student.model.layers):
            old = gqa_teacher.model.layers[first + offset]
            assert torch.equal(layer.mlp.gate_proj.weight, old.mlp.gate_proj.weight)


# ------------------------------------------------------------------ shapes, sizes, training


def test_shapes_and_parameter_count(teacher: LlamaForCausalLM) -> None:
    student = _prune(
        teacher, num_layers=2, hidden_size=96, intermediate_size=100, num_heads=3, num_kv_heads=3
    )
    vocab, hidden, heads, head_dim, ffn = teacher.config.vocab_size, 96, 3, 32, 100
    per_layer = 4 * hidden * heads * head_dim + 3 * hidden * ffn + 2 * hidden
    assert count_parameters(student) == vocab * hidden + 2 * per_layer + hidden  # tied head counted once
    layer = student.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (heads * head_dim, hidden)
    assert layer.self_attn.o_proj.weight.shape == (hidden, heads * head_dim)
    assert layer.mlp.down_proj.weight.shape == (hidden, ffn)
    assert student.config.head_dim == 32 and student.config.num_hidden_layers == 2
    assert student.lm_head.weight is student.model.embed_tokens.weight


def test_hidden_channels_consistent_everywhere(gqa_teacher: LlamaForCausalLM) -> None:
    student = _prune(gqa_teacher, "gradient", hidden_size=20)
    embed = gqa_teacher.model.embed_tokens.weight
    kept = [
        c
        for c in range(32)
        if any(torch.equal(embed[:, c], col) for col in student.model.embed_tokens.weight.T)
    ]
    assert len(kept) == 20
    assert torch.equal(student.lm_head.weight, gqa_teacher.lm_head.weight[:, kept])
    assert torch.equal(student.model.norm.weight, gqa_teacher.model.norm.weight[kept])
    old, new = gqa_teacher.model.layers[0], student.model.layers[0]
    assert torch.equal(new.self_attn.q_proj.weight, old.self_attn.q_proj.weight[:, kept])
    assert torch.equal(new.self_attn.o_proj.weight, old.self_attn.o_proj.weight[kept])
    assert torch.equal(new.self_attn.o_proj.bias, old.self_attn.o_proj.bias[kept])
    assert torch.equal(new.mlp.down_proj.weight, old.mlp.down_proj.weight[kept])


@pytest.mark.parametrize("importance", SCORES)
def test_pruned_student_trains(teacher: LlamaForCausalLM, importance: str) -> None:
    student = _prune(
        teacher, importance, num_layers=2, hidden_size=64, intermediate_size=64, num_heads=2, num_kv_heads=2
    )
    student.train()
    batch = _batches(teacher.config.vocab_size)[0]
    loss = student(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())


def test_round_trip_through_save_pretrained(teacher: LlamaForCausalLM, tmp_path: object) -> None:
    student = _prune(teacher, num_layers=2, hidden_size=96, num_heads=2, num_kv_heads=2)
    student.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert torch.equal(_logits(loaded), _logits(student))


# ------------------------------------------------------------------ selection


@pytest.mark.parametrize("importance", SCORES)
def test_selection_is_deterministic(teacher: LlamaForCausalLM, importance: str) -> None:
    first = _prune(teacher, importance, hidden_size=80, intermediate_size=120, num_heads=2, num_kv_heads=2)
    second = _prune(teacher, importance, hidden_size=80, intermediate_size=120, num_heads=2, num_kv_heads=2)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_magnitude_keeps_the_largest_channel() -> None:
    """Hand-made case: one FFN channel with huge weights must survive a prune to one channel."""
    config = LlamaConfig(
        vocab_size=10,
        hidden_size=8,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        attn_implementation="eager",
    )
    model = build_decoder(config, seed=0)
    model.model.layers[0].mlp.up_proj.weight.data[2] *= 100
    student = prune_llama(model, **_sizes(model, intermediate_size=1))
    assert torch.equal(
        student.model.layers[0].mlp.up_proj.weight[0], model.model.layers[0].mlp.up_proj.weight[2]
    )


def test_ties_go_to_the_lower_index() -> None:
    config = LlamaConfig(
        vocab_size=10,
        hidden_size=8,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        attn_implementation="eager",
    )
    model = build_decoder(config, seed=0)
    mlp = model.model.layers[0].mlp
    for proj in (mlp.gate_proj.weight, mlp.up_proj.weight):
        proj.data[:] = 1.0
    mlp.down_proj.weight.data[:] = 1.0
    student = prune_llama(model, **_sizes(model, intermediate_size=2))
    assert torch.equal(student.model.layers[0].mlp.gate_proj.weight, mlp.gate_proj.weight[:2])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_heads": 8, "num_kv_heads": 8}, "num_heads=8 must be between 1 and the teacher's 4"),
        ({"num_layers": 4}, "num_layers=4 must be between 1"),
        ({"hidden_size": 0}, "hidden_size=0 must be between 1"),
        ({"intermediate_size": 257}, "intermediate_size=257"),
        ({"num_heads": 3, "num_kv_heads": 2}, "not divisible by num_kv_heads=2"),
        ({"num_heads": 4, "num_kv_heads": 1}, "query heads per key/value head"),
        ({"hidden_size": 90, "num_heads": 4}, "hidden_size=90 is not divisible by num_heads=4"),
    ],
)
def test_bad_sizes_are_explained(teacher: LlamaForCausalLM, changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prune_llama(teacher, **_sizes(teacher, **changes))


def test_bad_importance_and_missing_data(teacher: LlamaForCausalLM) -> None:
    with pytest.raises(ValueError, match="importance must be one of"):
        prune_llama(teacher, **_sizes(teacher), importance="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs calibration_batches"):
        prune_llama(teacher, **_sizes(teacher), importance="gradient")
    with pytest.raises(ValueError, match="calibration_batches is empty"):
        prune_llama(teacher, **_sizes(teacher), importance="activation", calibration_batches=[])


def test_non_llama_teacher_is_refused() -> None:
    with pytest.raises(TypeError, match="needs a LlamaForCausalLM"):
        prune_llama(
            torch.nn.Linear(2, 2),
            **dict.fromkeys(
                ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads"), 1
            ),
        )  # type: ignore[arg-type]
