"""The hint methods' shared plumbing (`reference_impls.white_box.features`): the layer maps the
papers state, reading features from unmodified transformers models of three families, hooks that
clean up after themselves, and the attention-implementation pitfall."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from reference_impls.core.models import build_encoder_config, build_student_config, build_teacher_config
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.losses import attention_kl, relation_kl
from reference_impls.white_box.features import (
    capture_outputs,
    forward_with_features,
    layer_map,
    matched_states,
    projector,
    transformer_layers,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    ids = torch.tensor(
        [tokenizer.encode("abc>cba"), tokenizer.encode("ab>ba") + [tokenizer.pad_token_id] * 2]
    )
    return {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).long()}


def test_layer_maps_are_the_papers() -> None:
    # Patient KD, 6-layer student of BERT-base: PKD-Skip {2,4,6,8,10} (the code's 0-based
    # 1,3,5,7,9); PKD-Last, the last layers below the top, {7,...,11}.
    assert list(layer_map(12, 6, "skip").values()) == [2, 4, 6, 8, 10]
    assert list(layer_map(12, 6, "last").values()) == [7, 8, 9, 10, 11]
    # TinyBERT, 4 of 12: g(m) = 3m, the embeddings (index 0) included.
    assert layer_map(12, 4, "uniform") == {0: 0, 1: 3, 2: 6, 3: 9, 4: 12}
    assert layer_map(4, 2, "uniform") == {0: 0, 1: 2, 2: 4}
    with pytest.raises(ValueError, match="one of uniform, skip, last"):
        layer_map(4, 2, "every-other")
    with pytest.raises(ValueError, match="at most as many"):
        layer_map(2, 4)


def test_projector_bridges_widths_and_is_the_identity_when_they_agree() -> None:
    assert isinstance(projector(64, 64), torch.nn.Identity)
    assert projector(64, 128)(torch.randn(2, 3, 64)).shape == (2, 3, 128)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_features_come_from_an_unmodified_model_of_each_family(tokenizer, family: str) -> None:
    if family == "bert":
        model = AutoModelForMaskedLM.from_config(build_encoder_config(tokenizer, num_labels=2, teacher=True))
    else:
        model = AutoModelForCausalLM.from_config(build_student_config(tokenizer, family))
    model.eval()  # in train mode BERT returns its maps after attention dropout (rows sum to ≠ 1)
    batch = _batch(tokenizer)
    out = forward_with_features(model, batch, attentions=True)
    depth = model.config.num_hidden_layers
    assert len(out.hidden_states) == depth + 1 and len(out.attentions) == depth
    rows = out.attentions[-1].sum(-1)  # probabilities: each real query row sums to 1
    assert torch.allclose(rows[batch["attention_mask"].bool()[:, None, :].expand_as(rows)], torch.tensor(1.0))
    assert len(transformer_layers(model)) == depth


@pytest.mark.convention("attention-maps-need-eager")
def test_attention_maps_are_read_under_eager_attention_even_from_an_sdpa_model(tokenizer) -> None:
    config = build_teacher_config(tokenizer)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    batch = _batch(tokenizer)
    silent = model(**batch, output_attentions=True)
    assert not silent.attentions or silent.attentions[0] is None  # the pitfall: nothing, no error
    with pytest.warns(UserWarning, match="eager attention"):
        out = forward_with_features(model, batch, attentions=True)
    assert len(out.attentions) == config.num_hidden_layers and out.attentions[0] is not None


@pytest.mark.convention("attention-maps-need-eager")
def test_feature_losses_train_a_student_towards_a_wider_teacher(tokenizer) -> None:
    """Relations bridge widths and head counts without a projector; one step lowers both losses."""
    teacher = AutoModelForCausalLM.from_config(build_teacher_config(tokenizer)).eval()
    student = AutoModelForCausalLM.from_config(build_student_config(tokenizer, "llama"))
    batch = _batch(tokenizer)
    mapping = layer_map(teacher.config.num_hidden_layers, student.config.num_hidden_layers, "uniform")
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        with torch.no_grad():
            t = forward_with_features(teacher, batch, attentions=True)
        s = forward_with_features(student, batch, attentions=True)
        relations = sum(
            relation_kl(a, b, 4, batch["attention_mask"])
            for _, a, b in matched_states(s.hidden_states, t.hidden_states, mapping)
        )
        last_attention = attention_kl(
            s.attentions[-1].mean(1, keepdim=True),
            t.attentions[-1].mean(1, keepdim=True),
            batch["attention_mask"],
        )
        return relations + last_attention

    before = loss()
    for _ in range(5):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < before.item()


def test_hooks_capture_and_are_removed_even_after_an_error(tokenizer) -> None:
    model = AutoModelForCausalLM.from_config(build_student_config(tokenizer, "llama"))
    layer = transformer_layers(model)[0]
    with capture_outputs({"values": layer.self_attn.v_proj}) as captured:
        model(**_batch(tokenizer))
    assert captured["values"].shape[:2] == (2, 7)
    with pytest.raises(RuntimeError), capture_outputs({"values": layer.self_attn.v_proj}):
        raise RuntimeError("a failed step")
    assert not layer.self_attn.v_proj._forward_hooks


def test_a_map_longer_than_the_outputs_says_how_to_build_it() -> None:
    states = tuple(torch.zeros(1, 2, 4) for _ in range(3))
    with pytest.raises(ValueError, match="layer_map"):
        list(matched_states(states, states, {0: 0, 1: 5}))
