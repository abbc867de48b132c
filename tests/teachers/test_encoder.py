"""The encoder layer of the BERT-era methods: tokenizer, masked-LM masking, the two shipped encoder
teachers, and the classification suite's run (`reference_impls.run.encoders`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reference_impls.core.encoders import LabelCrossEntropy, MaskedLM, encode_text, mask_for_mlm, text_batches
from reference_impls.core.tokenizer import build_encoder_tokenizer, build_tokenizer
from reference_impls.losses import IGNORE_INDEX
from reference_impls.tasks.strings import TASK_NAMES, classification_view, make_split
from reference_impls.teachers import encoder


def test_the_encoder_tokenizer_is_the_character_vocabulary_plus_a_mask() -> None:
    tokenizer, plain = build_encoder_tokenizer(), build_tokenizer()
    assert len(tokenizer) == len(plain) + 1 and tokenizer.mask_token_id == len(plain)
    assert all(tokenizer.get_vocab()[token] == index for token, index in plain.get_vocab().items())
    ids = encode_text(tokenizer, "ab = ba")
    assert ids[0] == tokenizer.cls_token_id == plain.bos_token_id and ids[-1] == tokenizer.sep_token_id


def test_masking_follows_bert_and_never_touches_special_tokens_or_padding() -> None:
    tokenizer = build_encoder_tokenizer()
    texts = [text for text, _ in classification_view(make_split("train", 400))]
    batch = next(iter(text_batches(tokenizer, texts, batch_size=400, shuffle=False)))
    masked, labels = mask_for_mlm(
        batch["input_ids"], batch["attention_mask"], tokenizer, generator=torch.Generator().manual_seed(0)
    )
    chosen = labels != IGNORE_INDEX
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids)) | (
        batch["attention_mask"] == 0
    )
    assert not (chosen & special).any()
    assert (masked[~chosen] == batch["input_ids"][~chosen]).all()  # unchosen positions are left alone
    share = chosen.sum() / (~special).sum()
    assert 0.13 < share < 0.17  # 15% of the ordinary tokens
    as_mask = (masked[chosen] == tokenizer.mask_token_id).float().mean()
    unchanged = (masked[chosen] == labels[chosen]).float().mean()
    assert 0.75 < as_mask < 0.85 and 0.05 < unchanged < 0.16  # 80% [MASK]; 10% kept (+ random hits)
    with pytest.raises(ValueError, match="mask token"):
        mask_for_mlm(batch["input_ids"], batch["attention_mask"], build_tokenizer())


def test_the_shipped_encoder_teachers_load_and_beat_chance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDATLAS_CACHE", str(tmp_path))  # an empty cache: nothing is trained
    mlm, classifier, tokenizer = encoder.load_or_train_encoder_teachers("cpu", progress=False)
    assert not (tmp_path / "teachers").exists() and not classifier.training
    test = classification_view(make_split("test", 140))
    assert encoder.accuracy(classifier, tokenizer, test) > 0.7  # chance is 1/7
    # The classifier was fine-tuned from the masked LM: their embeddings started equal and moved little.
    shift = (
        classifier.bert.embeddings.word_embeddings.weight - mlm.bert.embeddings.word_embeddings.weight
    ).norm()
    assert shift < mlm.bert.embeddings.word_embeddings.weight.norm()


def test_a_quick_recipe_trains_both_teachers_deterministically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDATLAS_CACHE", str(tmp_path))
    first = encoder.load_or_train_encoder_teachers("cpu", progress=False, recipe=encoder.QUICK_ENCODER_RECIPE)
    assert all(p.is_dir() for p in encoder.encoder_dirs(encoder.QUICK_ENCODER_RECIPE).values())
    again = encoder.build_encoder_teacher("classifier", encoder.QUICK_ENCODER_RECIPE, "cpu", progress=False)[
        0
    ]
    assert all(
        torch.equal(a, b)
        for a, b in zip(first[1].state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert encoder.encoder_keys(encoder.QUICK_ENCODER_RECIPE) != encoder.encoder_keys(
        encoder.EncoderTeacherRecipe()
    )


def test_the_plain_objectives_train_a_classifier_and_a_masked_lm() -> None:
    from transformers import BertForMaskedLM, BertForSequenceClassification

    from reference_impls.core.models import build_encoder_config

    tokenizer = build_encoder_tokenizer()
    config = build_encoder_config(tokenizer, num_labels=len(TASK_NAMES), teacher=False)
    pairs = classification_view(make_split("train", 32))
    batch = next(iter(text_batches(tokenizer, [t for t, _ in pairs], [y for _, y in pairs], batch_size=32)))
    for model, loss in (
        (BertForSequenceClassification(config), LabelCrossEntropy()),
        (BertForMaskedLM(config), MaskedLM(tokenizer)),
    ):
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        torch.manual_seed(0)
        before = loss(model, None, batch, None).item()
        for _ in range(20):
            optimizer.zero_grad()
            loss(model, None, batch, None).backward()
            optimizer.step()
        torch.manual_seed(0)
        assert loss(model, None, batch, None).item() < before
