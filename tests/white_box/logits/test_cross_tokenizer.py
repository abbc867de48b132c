"""Cross-tokenizer distillation: the pair tokenizer, alignment, ULD and DSKD (with CMA)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from reference_impls.core.tokenizer import (
    CHARACTERS,
    SPECIAL_TOKENS,
    TOKENIZERS,
    build_pair_tokenizer,
    build_tokenizer,
    encode_pair,
)
from reference_impls.losses import reverse_kl
from reference_impls.tasks.strings import make_split
from reference_impls.white_box.logits._cross_tokenizer import (
    DSKDProjectors,
    ModelOutputs,
    align_by_characters,
    align_response_starts,
    common_segments,
    cross_model_attention,
    dskd_cma_loss,
    dskd_loss,
    token_char_spans,
    uld_loss,
)

IGNORE = -100


def _shifted(tokenizer, prompt: str, response: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids[:-1], labels[1:]) of one example, as a batch of one."""
    ids, labels = encode_pair(tokenizer, prompt, response)
    return torch.tensor([ids[:-1]]), torch.tensor([labels[1:]])


# --- the pair tokenizer --------------------------------------------------------------------------


def test_pair_tokenizer_is_registered_deterministic_and_extends_the_characters() -> None:
    char, pair = build_tokenizer(), TOKENIZERS["pair"]()
    assert set(TOKENIZERS) >= {"char", "pair"}
    assert len(char) == len(SPECIAL_TOKENS) + len(CHARACTERS)  # the teacher tokenizer is unchanged
    assert pair.get_vocab() == build_pair_tokenizer().get_vocab()  # deterministic
    assert len(pair) > len(char)
    # Same ids for the characters and special tokens; merges come after them.
    char_vocab = char.get_vocab()
    assert all(pair.get_vocab()[token] == index for token, index in char_vocab.items())


def test_pair_tokenizer_splits_the_suite_differently_and_round_trips() -> None:
    char, pair = build_tokenizer(), build_pair_tokenizer()
    shorter = 0
    for example in make_split("test", 30):
        text = example.prompt + example.response
        pair_ids = pair(text, add_special_tokens=False)["input_ids"]
        assert pair.decode(pair_ids) == text
        shorter += len(pair_ids) < len(char(text, add_special_tokens=False)["input_ids"])
    assert shorter == 30
    assert pair.convert_ids_to_tokens(pair("copy", add_special_tokens=False)["input_ids"]) == ["co", "py"]


def test_pair_tokenizer_follows_merge_priority_and_rejects_bad_merges() -> None:
    tokenizer = build_pair_tokenizer(["bc", "ab"])
    assert tokenizer.convert_ids_to_tokens(tokenizer("abc", add_special_tokens=False)["input_ids"]) == [
        "a",
        "bc",
    ]
    with pytest.raises(ValueError, match="two characters"):
        build_pair_tokenizer(["abc"])
    with pytest.raises(ValueError, match="repeat"):
        build_pair_tokenizer(["ab", "ab"])


# --- alignment -----------------------------------------------------------------------------------


def test_response_alignment_by_hand_on_char_teacher_and_pair_student() -> None:
    teacher_tok, student_tok = build_tokenizer(), build_pair_tokenizer(["cb", "ev", " ="])
    # teacher: <bos> r e v : ␠ a b c ␠ = | c b a <eos>  -> shifted labels valid at 10..13
    # student: <bos> r ev : ␠ a b c ␠=  | cb a <eos>     -> shifted labels valid at 8..10
    _, teacher_labels = _shifted(teacher_tok, "rev: abc =", "cba")
    _, student_labels = _shifted(student_tok, "rev: abc =", "cba")
    assert (teacher_labels[0] != IGNORE).nonzero().flatten().tolist() == [10, 11, 12, 13]
    assert (student_labels[0] != IGNORE).nonzero().flatten().tolist() == [8, 9, 10]
    assert student_tok.convert_ids_to_tokens(student_labels[0, 8:].tolist()) == ["cb", "a", "<eos>"]

    alignment = align_response_starts(student_labels, teacher_labels)
    # Left-aligned, cut to the shorter (3): student "cb" meets teacher "c" (different splits).
    assert alignment.student_positions.tolist() == [[8, 9, 10]]
    assert alignment.teacher_positions.tolist() == [[10, 11, 12]]
    assert alignment.mask.tolist() == [[True, True, True]]

    skipped = align_response_starts(
        student_labels, teacher_labels, skip_student_eos=True, skip_teacher_eos=True
    )
    assert skipped.student_positions.tolist() == [[8, 9]] and skipped.teacher_positions.tolist() == [[10, 11]]


def test_response_alignment_empty_response_eos_at_step_one_and_mixed_batch() -> None:
    teacher_tok, student_tok = build_tokenizer(), build_pair_tokenizer()
    _, t_empty = _shifted(teacher_tok, "up: ab =", "")
    _, s_empty = _shifted(student_tok, "up: ab =", "")
    # EOS is the first (and only) response label: one pair, the EOS positions.
    one = align_response_starts(s_empty, t_empty)
    assert one.student_positions.tolist() == [[s_empty.shape[1] - 1]]
    assert one.teacher_positions.tolist() == [[t_empty.shape[1] - 1]]
    assert align_response_starts(s_empty, t_empty, skip_student_eos=True).mask.shape == (1, 0)

    student = torch.tensor([[IGNORE, 5, 6, IGNORE], [IGNORE] * 4])
    teacher = torch.tensor([[IGNORE, IGNORE, 1, 2, 3], [IGNORE, 4, 4, 4, 4]])
    mixed = align_response_starts(student, teacher)
    assert mixed.mask.tolist() == [[True, True], [False, False]]
    assert mixed.student_positions.tolist() == [[1, 2], [0, 0]]
    assert mixed.teacher_positions.tolist() == [[2, 3], [0, 0]]
    with pytest.raises(ValueError, match="same example"):
        align_response_starts(student, teacher[:1])


def test_character_alignment_of_differently_split_multi_character_tokens() -> None:
    left, right = build_pair_tokenizer(["ab"]), build_pair_tokenizer(["bc"])
    left_spans, right_spans = token_char_spans(left, "abcd"), token_char_spans(right, "abcd")
    assert left_spans == [(0, 2), (2, 3), (3, 4)]  # ab | c | d
    assert right_spans == [(0, 1), (1, 3), (3, 4)]  # a | bc | d
    assert align_by_characters(left_spans, right_spans) == [[0, 1], [1], [2]]
    assert common_segments(left_spans, right_spans) == [
        (range(0, 2), range(0, 2)),
        (range(2, 3), range(2, 3)),
    ]

    char_spans = token_char_spans(build_tokenizer(), "cba")
    pair_spans = token_char_spans(build_pair_tokenizer(["cb"]), "cba")
    assert align_by_characters(pair_spans, char_spans) == [[0, 1], [2]]
    assert common_segments(pair_spans, char_spans) == [(range(0, 1), range(0, 2)), (range(1, 2), range(2, 3))]
    assert common_segments([], []) == []
    assert align_by_characters([(0, 0)], char_spans) == [[]]  # a special token covers no character
    with pytest.raises(ValueError, match="without gaps"):
        common_segments([(0, 1), (2, 3)], [(0, 3)])
    with pytest.raises(ValueError, match="not the same text"):
        common_segments([(0, 1)], [(0, 2)])


# --- ULD -----------------------------------------------------------------------------------------


def test_uld_hand_computed_on_vocabularies_of_size_three_and_two() -> None:
    student = torch.tensor([[[0.5, 0.3, 0.2]]]).log()
    teacher = torch.tensor([[[0.1, 0.9]]]).log()
    labels = torch.tensor([[0]])
    # sorted student (0.5, 0.3, 0.2) vs sorted, zero-padded teacher (0.9, 0.1, 0): 0.4 + 0.2 + 0.2
    assert uld_loss(student, teacher, labels, labels).item() == pytest.approx(0.8, abs=1e-6)
    assert uld_loss(teacher, student, labels, labels).item() == pytest.approx(0.8, abs=1e-6)
    assert uld_loss(student, student, labels, labels).item() == 0.0


def _uld_direct(student_logits, teacher_logits, student_labels, teacher_labels, ts=1.0, tt=1.0) -> float:
    total, count = 0.0, 0
    for b in range(student_logits.shape[0]):
        s_pos = [i for i, y in enumerate(student_labels[b].tolist()) if y != IGNORE]
        t_pos = [i for i, y in enumerate(teacher_labels[b].tolist()) if y != IGNORE]
        for i, j in zip(s_pos, t_pos, strict=False):
            p_s = sorted(torch.softmax(student_logits[b, i].double() / ts, -1).tolist(), reverse=True)
            p_t = sorted(torch.softmax(teacher_logits[b, j].double() / tt, -1).tolist(), reverse=True)
            width = max(len(p_s), len(p_t))
            p_s, p_t = p_s + [0.0] * (width - len(p_s)), p_t + [0.0] * (width - len(p_t))
            total += sum(abs(a - c) for a, c in zip(p_s, p_t, strict=True))
            count += 1
    return total / max(count, 1)


def _random_pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 7, 9, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(3, 10, 5, generator=g, dtype=torch.float64) * 2
    student_labels = torch.tensor([[IGNORE] * 2 + [1] * 5, [IGNORE] * 6 + [2], [IGNORE] * 7])
    teacher_labels = torch.tensor([[IGNORE] * 7 + [1] * 3, [IGNORE] * 1 + [3] * 9, [IGNORE] * 4 + [0] * 6])
    return student, teacher, student_labels, teacher_labels


def test_uld_matches_direct_formula_with_temperatures() -> None:
    student, teacher, s_labels, t_labels = _random_pair()
    for ts, tt in ((1.0, 1.0), (2.0, 0.5)):
        expected = _uld_direct(student, teacher, s_labels, t_labels, ts, tt)
        got = uld_loss(student, teacher, s_labels, t_labels, student_temperature=ts, teacher_temperature=tt)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(expected, rel=1e-12)
    per_pair = uld_loss(student, teacher, s_labels, t_labels, reduction="none")
    assert per_pair.shape == (3, 3) and per_pair[2].abs().sum() == 0  # row 2 has no response
    summed = uld_loss(student, teacher, s_labels, t_labels, reduction="sum")
    assert summed.item() == pytest.approx(per_pair.sum().item())
    assert uld_loss(student, teacher, s_labels, t_labels, num_items_in_batch=8).item() == pytest.approx(
        summed.item() / 8
    )


def test_uld_is_invariant_to_permuting_either_vocabulary_and_to_masked_padding() -> None:
    student, teacher, s_labels, t_labels = _random_pair(1)
    base = uld_loss(student, teacher, s_labels, t_labels)
    permuted = uld_loss(student[..., torch.randperm(9)], teacher[..., torch.randperm(5)], s_labels, t_labels)
    assert permuted.item() == pytest.approx(base.item(), rel=1e-12)
    # -inf columns (masked vocabulary padding) are the same as a smaller vocabulary.
    padded = torch.cat([teacher, torch.full((3, 10, 4), -math.inf, dtype=torch.float64)], dim=-1)
    assert uld_loss(student, padded, s_labels, t_labels).item() == pytest.approx(base.item(), rel=1e-12)


def test_uld_gradients_reach_only_the_student() -> None:
    student, teacher, s_labels, t_labels = _random_pair(2)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    uld_loss(student, teacher, s_labels, t_labels).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    # Positions outside the aligned response get no gradient.
    assert student.grad[0, :2].abs().sum() == 0 and student.grad[2].abs().sum() == 0
    assert torch.autograd.gradcheck(
        lambda s: uld_loss(s, teacher.detach(), s_labels, t_labels), (student.detach().requires_grad_(True),)
    )


def test_uld_all_masked_batch_is_zero_with_finite_gradients() -> None:
    student = torch.randn(2, 4, 6, requires_grad=True)
    teacher = torch.randn(2, 5, 3)
    labels_s, labels_t = torch.full((2, 4), IGNORE), torch.full((2, 5), IGNORE)
    loss = uld_loss(student, teacher, labels_s, labels_t)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(student.grad).all() and student.grad.abs().sum() == 0


def test_uld_runs_on_two_real_tokenizations() -> None:
    teacher_tok, student_tok = build_tokenizer(), build_pair_tokenizer()
    _, t_labels = _shifted(teacher_tok, "rev: abc =", "cba")
    _, s_labels = _shifted(student_tok, "rev: abc =", "cba")
    student = torch.randn(1, s_labels.shape[1], len(student_tok), requires_grad=True)
    teacher = torch.randn(1, t_labels.shape[1], len(teacher_tok))
    loss = uld_loss(student, teacher, s_labels, t_labels)
    loss.backward()
    assert 0 < loss.item() <= 2  # L1 between two probability vectors
    assert student.grad.abs().sum() > 0


def test_uld_rejects_bad_input_with_a_fix() -> None:
    student, teacher, s_labels, t_labels = _random_pair()
    with pytest.raises(ValueError, match="shift before calling"):
        uld_loss(student, teacher, s_labels[:, 1:], t_labels)
    with pytest.raises(ValueError, match="student_temperature must be > 0"):
        uld_loss(student, teacher, s_labels, t_labels, student_temperature=0.0)
    with pytest.raises(ValueError, match="same example"):
        uld_loss(student, teacher[:2], s_labels, t_labels[:2])


# --- DSKD ----------------------------------------------------------------------------------------


def _outputs(
    g: torch.Generator, batch: int, length: int, vocab: int, width: int, labels: torch.Tensor
) -> ModelOutputs:
    hidden = torch.randn(batch, length, width, generator=g)
    head = torch.randn(vocab, width, generator=g)
    return ModelOutputs(
        logits=(hidden @ head.T).requires_grad_(True),
        hidden=hidden.requires_grad_(True),
        labels=labels,
        head=head.requires_grad_(True),
        input_ids=torch.randint(0, vocab, (batch, length), generator=g),
        embeddings=torch.randn(vocab, width, generator=g).requires_grad_(True),
    )


def _labels(g: torch.Generator, batch: int, length: int, vocab: int, prompt: int) -> torch.Tensor:
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[:, :prompt] = IGNORE
    return labels


def test_dskd_shapes_gradients_and_stop_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    labels = _labels(g, 2, 5, 11, 2)
    student, teacher = _outputs(g, 2, 5, 11, 4, labels), _outputs(g, 2, 5, 11, 6, labels)
    projectors = DSKDProjectors(4, 6)
    loss = dskd_loss(student, teacher, projectors)
    assert loss.total.shape == () and torch.isfinite(loss.total)
    assert loss.kd.item() == pytest.approx((loss.t2s_kd + loss.t2s_ce + loss.s2t_kd).item())
    assert loss.total.item() == pytest.approx((0.5 * loss.ce + 0.5 * loss.kd).item())
    loss.total.backward()
    for tensor in (
        student.logits,
        student.hidden,
        *projectors.t2s.parameters(),
        *projectors.s2t.parameters(),
    ):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    for tensor in (teacher.logits, teacher.hidden, teacher.head, student.head):
        assert tensor.grad is None  # frozen heads and the teacher are read, not trained


def test_dskd_matches_direct_formula() -> None:
    g = torch.Generator().manual_seed(1)
    labels = _labels(g, 2, 6, 7, 3)
    student, teacher = _outputs(g, 2, 6, 7, 3, labels), _outputs(g, 2, 6, 7, 5, labels)
    projectors = DSKDProjectors(3, 5)
    got = dskd_loss(student, teacher, projectors, kd_temperature=2.0, kd_rate=0.3)

    valid = labels != IGNORE
    n = valid.sum().double()
    y = labels.clamp_min(0)

    def log_softmax(z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(z.double(), -1)

    def fkl(
        student_z: torch.Tensor, teacher_z: torch.Tensor
    ) -> torch.Tensor:  # KL(teacher || student), summed
        log_p, log_q = log_softmax(teacher_z / 2.0), log_softmax(student_z / 2.0)
        return ((log_p.exp() * (log_p - log_q)).sum(-1) * valid).sum()

    def ce(z: torch.Tensor) -> torch.Tensor:
        return (-log_softmax(z).gather(-1, y.unsqueeze(-1)).squeeze(-1) * valid).sum()

    with torch.no_grad():
        t2s = projectors.t2s(teacher.hidden).double() @ student.head.double().T
        s2t = projectors.s2t(student.hidden).double() @ teacher.head.double().T
        kd = fkl(student.logits, t2s) + ce(t2s) + fkl(s2t, teacher.logits)
        expected = 0.7 * ce(student.logits) / n + 0.3 * kd / n
    assert got.total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dskd_identity_projectors_and_equal_models_give_zero_kd() -> None:
    g = torch.Generator().manual_seed(2)
    labels = _labels(g, 2, 5, 9, 1)
    model = _outputs(g, 2, 5, 9, 4, labels)
    projectors = DSKDProjectors(4, 4)
    with torch.no_grad():
        for layer in (projectors.t2s, projectors.s2t):
            layer.weight.copy_(torch.eye(4))
            layer.bias.zero_()
    loss = dskd_loss(model, model, projectors)
    assert loss.t2s_kd.item() == pytest.approx(0.0, abs=1e-6)
    assert loss.s2t_kd.item() == pytest.approx(0.0, abs=1e-6)
    assert loss.t2s_ce.item() == pytest.approx(loss.ce.item(), rel=1e-6)
    # Any divergence of the loss API can be the student-space term.
    other = dskd_loss(model, model, projectors, divergence=reverse_kl)
    assert other.t2s_kd.item() == pytest.approx(0.0, abs=1e-6)


def test_dskd_rejects_different_vocabularies() -> None:
    g = torch.Generator().manual_seed(3)
    labels = _labels(g, 1, 4, 5, 1)
    with pytest.raises(ValueError, match="dskd_cma_loss"):
        dskd_loss(_outputs(g, 1, 4, 5, 3, labels), _outputs(g, 1, 4, 8, 3, labels), DSKDProjectors(3, 3))


def _cma_pair(seed: int) -> tuple[ModelOutputs, ModelOutputs]:
    g = torch.Generator().manual_seed(seed)
    student = _outputs(g, 2, 5, 11, 4, _labels(g, 2, 5, 11, 2))
    teacher = _outputs(g, 2, 7, 7, 6, _labels(g, 2, 7, 7, 3))
    return student, teacher


def test_cma_attention_matches_the_formula_and_masks_pairs() -> None:
    g = torch.Generator().manual_seed(4)
    queries, keys = torch.randn(1, 3, 8, generator=g), torch.randn(1, 4, 8, generator=g)
    student_mask = torch.tensor([[True, True, False]])
    teacher_mask = torch.tensor([[False, True, True, True]])
    logits = cross_model_attention(queries, keys, student_mask, teacher_mask)
    expected = queries[0] @ keys[0].T / math.sqrt(8)  # 8 = 2 d_t
    assert torch.allclose(logits[0, :2, 1:], expected[:2, 1:])
    weights = logits.softmax(-1)
    assert weights[0, :2, 0].max() < 1e-30  # a masked teacher position gets no weight
    assert torch.allclose(weights[0, :2, 1:], expected[:2, 1:].softmax(-1))


def test_dskd_cma_shapes_gradients_and_stop_gradients() -> None:
    student, teacher = _cma_pair(5)
    projectors = DSKDProjectors(4, 6, cross_model_attention=True)
    loss = dskd_cma_loss(student, teacher, projectors)
    assert torch.isfinite(loss.total) and loss.s2t_kd > 0 and loss.t2s_ce > 0
    loss.total.backward()
    for module in (projectors.t2s, projectors.s2t, projectors.query):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert student.logits.grad is not None and student.hidden.grad is not None
    for tensor in (
        teacher.logits,
        teacher.hidden,
        teacher.head,
        teacher.embeddings,
        student.head,
        student.embeddings,
    ):
        assert tensor.grad is None


def test_dskd_cma_counts_the_student_space_term_only_where_the_projected_teacher_is_right() -> None:
    student, teacher = _cma_pair(6)
    # A zero student head makes every projected-teacher logit 0, so its argmax (id 0) is wrong
    # wherever the label is not 0.
    labels = student.labels.masked_fill(student.labels == 0, 1)
    zero_head = ModelOutputs(
        student.logits, student.hidden, labels, torch.zeros(11, 4), student.input_ids, student.embeddings
    )
    projectors = DSKDProjectors(4, 6, cross_model_attention=True)
    loss = dskd_cma_loss(zero_head, teacher, projectors, divergence=functools.partial(reverse_kl))
    assert loss.t2s_kd.item() == 0.0 and loss.t2s_accuracy.item() == 0.0
    assert loss.t2s_ce.item() == pytest.approx(math.log(11), rel=1e-5)  # uniform over 11 entries


def test_dskd_cma_all_masked_batch_is_zero_with_finite_gradients() -> None:
    student, teacher = _cma_pair(7)
    masked_student = ModelOutputs(
        student.logits,
        student.hidden,
        torch.full_like(student.labels, IGNORE),
        student.head,
        student.input_ids,
        student.embeddings,
    )
    masked_teacher = ModelOutputs(
        teacher.logits,
        teacher.hidden,
        torch.full_like(teacher.labels, IGNORE),
        teacher.head,
        teacher.input_ids,
        teacher.embeddings,
    )
    projectors = DSKDProjectors(4, 6, cross_model_attention=True)
    loss = dskd_cma_loss(masked_student, masked_teacher, projectors)
    loss.total.backward()
    assert loss.total.item() == 0.0
    assert torch.isfinite(student.hidden.grad).all() and student.hidden.grad.abs().sum() == 0


def test_dskd_cma_needs_the_query_projector_and_embeddings() -> None:
    student, teacher = _cma_pair(8)
    with pytest.raises(ValueError, match="cross_model_attention=True"):
        dskd_cma_loss(student, teacher, DSKDProjectors(4, 6))
    bare = ModelOutputs(teacher.logits, teacher.hidden, teacher.labels, teacher.head)
    with pytest.raises(ValueError, match=r"teacher\.input_ids and teacher\.embeddings"):
        dskd_cma_loss(student, bare, DSKDProjectors(4, 6, cross_model_attention=True))


def test_dskd_cma_matches_direct_formula() -> None:
    student, teacher = _cma_pair(9)
    projectors = DSKDProjectors(4, 6, cross_model_attention=True).double()
    got = dskd_cma_loss(
        student, teacher, projectors, kd_temperature=2.0, teacher_temperature=1.5, kd_rate=0.4
    )

    def embed(model: ModelOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        valid = model.labels != IGNORE
        table = model.embeddings.detach().double()
        target = table[torch.where(valid, model.labels, 0)]
        return torch.cat([table[torch.where(valid, model.input_ids, 0)], target], -1), target

    def kl(p_logits: torch.Tensor, q_logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        log_p, log_q = torch.log_softmax(p_logits / 2.0, -1), torch.log_softmax(q_logits / 2.0, -1)
        return ((log_p.exp() * (log_p - log_q)).sum(-1) * keep).sum()

    s_valid, t_valid = student.labels != IGNORE, teacher.labels != IGNORE
    with torch.no_grad():
        s_index, _ = embed(student)
        t_index, t_target = embed(teacher)
        t_hidden = teacher.hidden.double()
        scores = projectors.query(s_index) @ (t_index / t_index.std()).transpose(1, 2) / math.sqrt(12)
        scores = scores.masked_fill(~(s_valid.unsqueeze(-1) & t_valid.unsqueeze(1)), -1e5)
        values = projectors.t2s(t_hidden / t_hidden.std() + t_target / t_target.std())
        t2s = scores.softmax(-1) @ values @ student.head.double().T
        s2t = (
            scores.transpose(1, 2).softmax(-1)
            @ projectors.s2t(student.hidden.double())
            @ teacher.head.double().T
        )
        y = student.labels.clamp_min(0)
        log_q = torch.log_softmax(student.logits.double(), -1)
        ce = (-log_q.gather(-1, y.unsqueeze(-1)).squeeze(-1) * s_valid).sum()
        t2s_ce = (-torch.log_softmax(t2s, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1) * s_valid).sum()
        right = s_valid & (t2s.argmax(-1) == student.labels)
        kd = (
            t2s_ce + kl(t2s / 1.5, student.logits.double(), right) + kl(teacher.logits.double(), s2t, t_valid)
        )
        expected = (0.6 * ce + 0.4 * kd) / s_valid.sum()
    assert got.total.item() == pytest.approx(expected.item(), rel=1e-5)
