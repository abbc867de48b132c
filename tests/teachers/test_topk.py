"""Tests for `reference_impls.teachers.topk`: the stored top-k file, its lookup and the top-k loss.

The direct formulas below work in float64 probability space with explicit top-k sets and never call
the module under test; the file tests run a tiny random-init causal LM on the embedded tokenizer.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from reference_impls.core.models import build_decoder, build_student_config
from reference_impls.core.tokenizer import build_tokenizer, encode_pair
from reference_impls.core.training import collate, next_token_view
from reference_impls.losses import forward_kl, reverse_kl
from reference_impls.losses.topk import topk_divergence
from reference_impls.tasks.strings import make_split
from reference_impls.teachers import topk as offline_teacher
from reference_impls.teachers.topk import (
    TopKFileError,
    TopKMismatchError,
    load_topk,
    precompute_topk,
    topk_kwargs,
)

TAILS = ["zero", "renormalize", "residual"]


# --- independent float64 formulas ----------------------------------------------------------------------


def direct_topk_kl(
    student_logits: Tensor, teacher_logits: Tensor, k: int, tail: str, reverse: bool = False
) -> Tensor:
    """Per-position top-k KL from explicit probability vectors (float64, loops over positions)."""
    p_all = torch.softmax(teacher_logits.double(), -1).reshape(-1, teacher_logits.shape[-1])
    q_all = torch.softmax(student_logits.double(), -1).reshape(-1, student_logits.shape[-1])
    values = []
    for p, q in zip(p_all, q_all, strict=True):
        support = p.argsort(descending=True)[:k]
        p_s, q_s = p[support], q[support]
        m, r = p_s.sum(), q_s.sum()
        if tail == "renormalize":
            p_s = p_s / m
        if tail == "residual":  # coarse-grain to k + 1 outcomes
            p_s, q_s = torch.cat([p_s, (1 - m).reshape(1)]), torch.cat([q_s, (1 - r).reshape(1)])
        a, b = (q_s, p_s) if reverse else (p_s, q_s)
        values.append(sum(x * math.log(x / y) for x, y in zip(a.tolist(), b.tolist(), strict=True) if x > 0))
    return torch.tensor(values, dtype=torch.float64).reshape(student_logits.shape[:-1])


def topk_of(teacher_logits: Tensor, k: int, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    log_p = torch.log_softmax(teacher_logits / temperature, -1)
    values, ids = log_p.topk(k, -1)
    return ids, values


def random_pair(shape: tuple[int, ...], vocab: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, vocab, generator=generator, dtype=torch.float64) * 2
    teacher = torch.randn(*shape, vocab, generator=generator, dtype=torch.float64) * 3
    return student, teacher


# --- the loss: hand-computed case, k = V, bounds, gradients, masking -----------------------------------

# Teacher P = [.5, .3, .15, .05], student Q = [.4, .2, .2, .2], k = 2: S = {0, 1}, m = .8, r = .6.
HAND = {
    "zero": 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.2),
    "renormalize": 0.625 * math.log(0.625 / 0.4) + 0.375 * math.log(0.375 / 0.2),
    "residual": 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.2) + 0.2 * math.log(0.2 / 0.4),
}
HAND_REVERSE = 0.4 * math.log(0.4 / 0.5) + 0.2 * math.log(0.2 / 0.3) + 0.4 * math.log(0.4 / 0.2)
HAND_FULL = HAND["zero"] + 0.15 * math.log(0.15 / 0.2) + 0.05 * math.log(0.05 / 0.2)


@pytest.mark.parametrize("tail", TAILS)
def test_hand_computed_case(tail: str) -> None:
    student = torch.tensor([[0.4, 0.2, 0.2, 0.2]], dtype=torch.float64).log()
    ids, logprobs = torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.3]], dtype=torch.float64).log()
    value = topk_divergence(student, ids, logprobs, tail=tail)  # type: ignore[arg-type]
    assert value.item() == pytest.approx(HAND[tail], abs=1e-12)
    # zero = m * renormalize + m log m; residual <= full KL
    assert HAND["zero"] == pytest.approx(0.8 * HAND["renormalize"] + 0.8 * math.log(0.8))
    assert HAND["residual"] < HAND_FULL
    reverse = topk_divergence(student, ids, logprobs, divergence="reverse_kl", tail="residual")
    assert reverse.item() == pytest.approx(HAND_REVERSE, abs=1e-12)


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_k_equal_to_vocab_is_exactly_the_full_forward_kl(tail: str, temperature: float) -> None:
    student, teacher = random_pair((3, 5), vocab=11)
    labels = torch.randint(0, 11, (3, 5))
    labels[0, :2] = -100
    ids, logprobs = topk_of(teacher, 11, temperature)
    tail_mass = torch.full(labels.shape, -math.inf, dtype=torch.float64)  # what the file stores at k = V
    for stored_tail in (tail_mass, None):  # stored, or derived from the top-k values
        value = topk_divergence(
            student,
            ids,
            logprobs,
            labels,
            tail=tail,  # type: ignore[arg-type]
            temperature=temperature,
            teacher_tail_logmass=stored_tail,
        )
        full = forward_kl(student, teacher, labels, temperature=temperature)
        torch.testing.assert_close(value, full, rtol=1e-12, atol=1e-12)
    reverse = topk_divergence(
        student, ids, logprobs, labels, divergence="reverse_kl", temperature=temperature
    )
    torch.testing.assert_close(reverse, reverse_kl(student, teacher, labels, temperature=temperature))


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("k", [1, 3, 8])
def test_agrees_with_direct_formula(tail: str, k: int) -> None:
    student, teacher = random_pair((4, 6), vocab=13, seed=k)
    ids, logprobs = topk_of(teacher, k)
    value = topk_divergence(student, ids, logprobs, tail=tail, reduction="none")  # type: ignore[arg-type]
    torch.testing.assert_close(value, direct_topk_kl(student, teacher, k, tail))
    if tail == "residual":
        reverse = topk_divergence(student, ids, logprobs, divergence="reverse_kl", reduction="none")
        torch.testing.assert_close(reverse, direct_topk_kl(student, teacher, k, tail, reverse=True))


@pytest.mark.parametrize("k", [1, 2, 5, 12])
def test_truncation_bounds_and_identities(k: int) -> None:
    student, teacher = random_pair((64,), vocab=13, seed=100 + k)
    ids, logprobs = topk_of(teacher, k)
    # The tail mass as the file stores it: from the full distribution, not 1 - sum(top-k).
    tail = torch.log_softmax(teacher, -1).scatter(-1, ids, -math.inf).logsumexp(-1)

    def per_position(**kwargs: object) -> Tensor:
        return topk_divergence(student, ids, logprobs, reduction="none", teacher_tail_logmass=tail, **kwargs)  # type: ignore[arg-type]

    full_forward = forward_kl(student, teacher, reduction="none")
    full_reverse = reverse_kl(student, teacher, reduction="none")
    # Data-processing inequality: the coarse-grained KL never exceeds the full one.
    assert (per_position(tail="residual") <= full_forward + 1e-12).all()
    assert (per_position(tail="residual", divergence="reverse_kl") <= full_reverse + 1e-12).all()
    assert (per_position(tail="residual") >= 0).all()
    if k == 12:  # a one-token tail: coarse-graining loses nothing, both are exact
        torch.testing.assert_close(per_position(tail="residual"), full_forward)
        torch.testing.assert_close(per_position(tail="residual", divergence="reverse_kl"), full_reverse)
    # renormalize is a true KL (>= 0); zero = m * renormalize + m log m.
    renormalized = per_position(tail="renormalize")
    assert (renormalized >= -1e-12).all()
    m = logprobs.exp().sum(-1)
    torch.testing.assert_close(per_position(tail="zero"), m * renormalized + m * m.log())


def test_zero_and_renormalize_share_the_minimiser_with_gradients_scaled_by_the_kept_mass() -> None:
    student, teacher = random_pair((6,), vocab=9, seed=7)
    ids, logprobs = topk_of(teacher, 3)
    grads = {}
    for tail in ("zero", "renormalize"):
        logits = student.clone().requires_grad_(True)
        topk_divergence(logits, ids, logprobs, tail=tail, reduction="sum").backward()  # type: ignore[arg-type]
        grads[tail] = logits.grad
    m = logprobs.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(grads["zero"], m * grads["renormalize"])


@pytest.mark.parametrize("tail", TAILS)
def test_gradients_reach_only_the_student(tail: str) -> None:
    student, teacher = random_pair((2, 4), vocab=7, seed=3)
    ids, logprobs = topk_of(teacher, 3)
    logits = student.clone().requires_grad_(True)
    logprobs = logprobs.clone().requires_grad_(True)
    topk_divergence(logits, ids, logprobs, tail=tail).backward()  # type: ignore[arg-type]
    assert logprobs.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0 and torch.isfinite(logits.grad).all()
    # The analytic gradient matches finite differences (float64).
    torch.autograd.gradcheck(
        lambda z: topk_divergence(z, ids, logprobs.detach(), tail=tail),  # type: ignore[arg-type]
        (student.clone().requires_grad_(True),),
    )


def test_residual_gradient_has_no_nan_at_k_equal_to_vocab_or_with_infinite_logits() -> None:
    student, teacher = random_pair((2, 3), vocab=5, seed=4)
    student[0, 0, 4] = -math.inf  # masked vocabulary entry in the student
    ids, logprobs = topk_of(teacher, 5)
    for k in (2, 5):
        logits = student.clone().requires_grad_(True)
        loss = topk_divergence(logits, ids[..., :k], logprobs[..., :k], divergence="reverse_kl")
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()  # type: ignore[arg-type]


def test_masking_reductions_and_all_masked_batches() -> None:
    student, teacher = random_pair((2, 5), vocab=8, seed=5)
    ids, logprobs = topk_of(teacher, 3)
    labels = torch.tensor([[-100, 1, 2, -100, -100], [3, 4, -100, -100, -100]])
    logits = student.clone().requires_grad_(True)
    per_position = topk_divergence(logits, ids, logprobs, labels, reduction="none")
    assert (per_position[labels == -100] == 0).all()
    mean = topk_divergence(logits, ids, logprobs, labels)
    torch.testing.assert_close(mean, per_position.sum() / 4)
    torch.testing.assert_close(topk_divergence(logits, ids, logprobs, labels, num_items_in_batch=8), mean / 2)
    mean.backward()
    assert (logits.grad[labels == -100] == 0).all()  # type: ignore[index]
    # Garbage at masked positions cannot leak in.
    logprobs_changed = logprobs.clone()
    logprobs_changed[labels == -100] = 0.0
    torch.testing.assert_close(topk_divergence(student, ids, logprobs_changed, labels), mean.detach())
    # All masked: exactly 0 with zero gradients.
    logits = student.clone().requires_grad_(True)
    loss = topk_divergence(logits, ids, logprobs, torch.full_like(labels, -100))
    loss.backward()
    assert loss.item() == 0.0 and (logits.grad == 0).all()  # type: ignore[union-attr]
    assert topk_divergence(student, ids, logprobs, scale_by_t2=True, temperature=2.0).item() == pytest.approx(
        4 * topk_divergence(student, ids, logprobs, temperature=2.0).item()
    )


def test_loss_bad_inputs_give_clear_errors() -> None:
    student, teacher = random_pair((2, 3), vocab=6)
    ids, logprobs = topk_of(teacher, 2)
    with pytest.raises(ValueError, match="tail='residual'"):
        topk_divergence(student, ids, logprobs, divergence="reverse_kl", tail="zero")
    with pytest.raises(ValueError, match="must both be"):
        topk_divergence(student, ids[:, :2], logprobs[:, :2])
    with pytest.raises(ValueError, match="shift before calling"):
        topk_divergence(student, ids, logprobs, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the student's vocabulary"):
        topk_divergence(student[..., :3], ids.clamp(min=4), logprobs)
    with pytest.raises(ValueError, match="tail must be"):
        topk_divergence(student, ids, logprobs, tail="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        topk_divergence(student, ids, logprobs, temperature=0.0)


# --- the file: round trip, lookup alignment, errors -------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer()


@pytest.fixture(scope="module")
def teacher(tokenizer):  # type: ignore[no-untyped-def]
    model = build_decoder(build_student_config(tokenizer), seed=1).eval()  # small and random: fast
    with torch.no_grad():  # sharper logits, like a trained teacher: its top-8 holds about 90 % of the mass
        model.model.norm.weight.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def rows(tokenizer):  # type: ignore[no-untyped-def]
    examples = make_split("train", 10, seed=3)
    pairs = [encode_pair(tokenizer, e.prompt, e.response) for e in examples]
    pairs[3] = encode_pair(tokenizer, examples[3].prompt, "")  # EOS at step one: a single response token
    ids, _ = pairs[5]
    pairs[5] = (ids, [-100] * len(ids))  # no response at all: zero stored rows
    return pairs


def teacher_view(teacher, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return next_token_view(logits, batch["labels"])


def test_round_trip_values_dtypes_and_metadata(teacher, rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = precompute_topk(
        teacher, rows, k=4, temperature=2.0, path=tmp_path / "t.safetensors", fingerprint="tiny@1",
        batch_size=3, progress=False,
    )  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary file left behind
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        dtypes = {name: handle.get_tensor(name).dtype for name in handle.keys()}  # noqa: SIM118
    assert metadata == {
        "format": "kdatlas-topk",
        "format_version": "1",
        "k": "4",
        "temperature": "2.0",
        "teacher_fingerprint": "tiny@1",
        "vocab_size": "100",
        "num_examples": "10",
        "num_tokens": metadata["num_tokens"],
    }
    assert dtypes == {
        "indices": torch.int32,
        "logprobs": torch.float32,
        "tail_logmass": torch.float32,
        "targets": torch.int32,
        "offsets": torch.int64,
    }
    signals = load_topk(path, fingerprint="tiny@1", num_examples=10, vocab_size=100, temperature=2.0, k=4)
    counts = signals.offsets.diff().tolist()
    assert counts[3] == 1 and counts[5] == 0
    assert (
        sum(counts)
        == int(metadata["num_tokens"])
        == sum(sum(label != -100 for label in r[1][1:]) for r in rows)
    )
    # Every stored row equals the teacher's own top-k at that response position (run alone).
    for e in (0, 3, 9):
        batch = collate([rows[e]], pad=0)
        logits, labels = teacher_view(teacher, batch)
        ids, values = topk_of(logits[labels != -100], 4, temperature=2.0)
        span = slice(int(signals.offsets[e]), int(signals.offsets[e + 1]))
        assert torch.equal(signals.indices[span].long(), ids)
        torch.testing.assert_close(signals.logprobs[span], values, rtol=1e-5, atol=1e-5)
        full = torch.log_softmax(logits[labels != -100] / 2.0, -1)
        tail = full.scatter(-1, ids, -math.inf).logsumexp(-1)
        torch.testing.assert_close(signals.tail_logmass[span], tail, rtol=1e-5, atol=1e-5)
        assert torch.equal(signals.targets[span].long(), labels[labels != -100])


def test_float16_storage(teacher, rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kwargs = {"k": 5, "temperature": 1.0, "fingerprint": "f", "progress": False}
    full = load_topk(precompute_topk(teacher, rows, path=tmp_path / "a.safetensors", **kwargs))  # type: ignore[arg-type]
    half = load_topk(
        precompute_topk(teacher, rows, path=tmp_path / "b.safetensors", logprob_dtype=torch.float16, **kwargs)  # type: ignore[arg-type]
    )
    assert half.logprobs.dtype == torch.float16
    assert torch.equal(full.indices, half.indices)
    # fp16 keeps 11 significant bits: |error| <= |log p| * 2^-11.
    assert ((half.logprobs.float() - full.logprobs).abs() <= full.logprobs.abs() * 2**-11 + 1e-6).all()


def test_lookup_aligns_with_shifted_labels_in_any_batch_and_k_equal_to_vocab_is_full_kl(
    teacher, rows, tokenizer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    path = precompute_topk(
        teacher,
        rows,
        k=100,
        temperature=1.0,
        path=tmp_path / "full.safetensors",
        fingerprint="x",
        progress=False,
    )
    signals = load_topk(path)
    order = [7, 3, 5, 0]  # another order and batch composition than at precompute time
    batch = collate([rows[e] for e in order], pad=0)
    teacher_logits, labels = teacher_view(teacher, batch)
    targets = signals.lookup(torch.tensor(order), labels)
    assert targets.indices.shape == (*labels.shape, 100) and targets.indices.dtype == torch.long
    valid = labels != -100
    gathered = torch.log_softmax(teacher_logits, -1).gather(-1, targets.indices)
    torch.testing.assert_close(targets.logprobs[valid], gathered[valid], rtol=1e-5, atol=1e-5)
    assert torch.isinf(targets.tail_logmass[valid]).all()  # k = V: nothing outside the top-k
    # Offline training signal == online teacher: the loss equals forward_kl on the teacher's logits.
    student = build_decoder(build_student_config(tokenizer), seed=2)
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    online = forward_kl(logits, teacher_logits, labels)
    for tail in TAILS:
        offline = topk_divergence(logits, labels=labels, tail=tail, **topk_kwargs(targets))  # type: ignore[arg-type]
        torch.testing.assert_close(offline, online, rtol=1e-5, atol=1e-6)


def test_batches_with_example_indices_give_the_same_file(teacher, rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    order = [4, 9, 0, 2, 8, 1, 6, 3, 5, 7]
    batches = []
    for start in (0, 4, 8):
        chunk = order[start : start + 4]
        batch = collate([rows[e] for e in chunk], pad=0)
        batches.append({**batch, "example_index": torch.tensor(chunk)})
    kwargs = {"k": 3, "temperature": 1.0, "fingerprint": "f", "progress": False}
    a = load_topk(precompute_topk(teacher, rows, path=tmp_path / "rows.safetensors", **kwargs))  # type: ignore[arg-type]
    b = load_topk(precompute_topk(teacher, batches, path=tmp_path / "batches.safetensors", **kwargs))  # type: ignore[arg-type]
    assert torch.equal(a.offsets, b.offsets) and torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="occurs twice"):
        precompute_topk(teacher, [*batches, batches[0]], path=tmp_path / "dup.safetensors", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing"):
        precompute_topk(teacher, batches[1:], path=tmp_path / "gap.safetensors", **kwargs)  # type: ignore[arg-type]


def test_training_from_the_file_moves_the_student_towards_the_teacher(
    teacher, rows, tokenizer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    signals = load_topk(
        precompute_topk(
            teacher,
            rows,
            k=8,
            temperature=1.0,
            path=tmp_path / "t.safetensors",
            fingerprint="f",
            progress=False,
        )
    )
    student = build_decoder(build_student_config(tokenizer), seed=5)
    batch = collate(rows, pad=0)
    teacher_logits, labels = teacher_view(teacher, batch)
    targets = signals.lookup(range(len(rows)), labels)  # type: ignore[arg-type]

    def student_logits() -> Tensor:
        return student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]

    before = forward_kl(student_logits().detach(), teacher_logits, labels).item()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(6):  # no teacher forward pass in the loop
        loss = topk_divergence(student_logits(), labels=labels, **topk_kwargs(targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = forward_kl(student_logits().detach(), teacher_logits, labels).item()
    assert after < 0.6 * before


def test_mismatched_file_says_what_differs_and_what_to_do(teacher, rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = precompute_topk(
        teacher, rows, k=2, temperature=1.0, path=tmp_path / "t.safetensors", fingerprint="v1", progress=False
    )
    for expected, fragment in [
        ({"fingerprint": "v2"}, "teacher fingerprint is 'v1' in the file but 'v2' now"),
        ({"num_examples": 11}, "number of examples is 10"),
        ({"vocab_size": 128}, "vocabulary size is 100"),
        ({"temperature": 2.0}, "temperature is 1.0"),
        ({"k": 4}, "k is 2"),
    ]:
        with pytest.raises(TopKMismatchError, match="Run precompute_topk again") as error:
            load_topk(path, **expected)  # type: ignore[arg-type]
        assert fragment in str(error.value)
    signals = load_topk(path)
    batch = collate([rows[0], rows[1]], pad=0)
    shifted = batch["labels"][:, 1:]
    unshifted = signals.lookup([0, 1], batch["labels"])  # same response tokens, one column too wide
    logits = torch.zeros(*shifted.shape, 100)
    with pytest.raises(ValueError, match=r"shifted labels, labels\[:, 1:\]"):
        topk_divergence(logits, labels=shifted, **topk_kwargs(unshifted))
    with pytest.raises(TopKMismatchError, match=r"batch row 0 \(example 1\)"):
        signals.lookup([1, 0], shifted)  # wrong order
    with pytest.raises(TopKMismatchError, match="out of range"):
        signals.lookup([0, 10], shifted)
    with pytest.raises(ValueError, match="one row per example index"):
        signals.lookup([0], shifted)


def test_corrupted_foreign_or_missing_files_give_clear_errors(teacher, rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = precompute_topk(
        teacher, rows, k=2, temperature=1.0, path=tmp_path / "t.safetensors", fingerprint="f", progress=False
    )
    with pytest.raises(TopKFileError, match="create it with precompute_topk"):
        load_topk(tmp_path / "absent.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(TopKFileError, match="Delete it and run precompute_topk again"):
        load_topk(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(TopKFileError, match="truncated or corrupted"):
        load_topk(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(TopKFileError, match="not a kdatlas top-k file"):
        load_topk(foreign)
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    inconsistent = tmp_path / "inconsistent.safetensors"
    save_file({**tensors, "offsets": tensors["offsets"][:-1]}, str(inconsistent), metadata=metadata)
    with pytest.raises(TopKFileError, match="inconsistent with the metadata"):
        load_topk(inconsistent)
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={**metadata, "format_version": "99"})
    with pytest.raises(TopKFileError, match="format version '99'"):
        load_topk(newer)


def test_failed_write_leaves_the_old_file_and_no_temporary(
    teacher, rows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.safetensors"
    precompute_topk(teacher, rows, k=2, temperature=1.0, path=path, fingerprint="old", progress=False)

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(offline_teacher, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        precompute_topk(teacher, rows, k=2, temperature=1.0, path=path, fingerprint="new", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
    assert load_topk(path).fingerprint == "old"


def test_precompute_bad_arguments(teacher, rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.safetensors"
    with pytest.raises(ValueError, match=r"k must be in \[1, vocab_size=100\]"):
        precompute_topk(teacher, rows, k=101, temperature=1.0, path=path, fingerprint="f", progress=False)
    with pytest.raises(ValueError, match="temperature"):
        precompute_topk(teacher, rows, k=2, temperature=0.0, path=path, fingerprint="f", progress=False)
    with pytest.raises(ValueError, match="no examples"):
        precompute_topk(teacher, [], k=2, temperature=1.0, path=path, fingerprint="f", progress=False)
    with pytest.raises(ValueError, match="logprob_dtype"):
        precompute_topk(
            teacher,
            rows,
            k=2,
            temperature=1.0,
            path=path,
            fingerprint="f",
            logprob_dtype=torch.bfloat16,
            progress=False,
        )


def test_rows_with_an_explicit_attention_mask(teacher, rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    triples = [(ids, [1] * len(ids), labels) for ids, labels in rows]
    kwargs = {"k": 3, "temperature": 1.0, "fingerprint": "f", "progress": False}
    a = load_topk(precompute_topk(teacher, rows, path=tmp_path / "a.safetensors", **kwargs))  # type: ignore[arg-type]
    b = load_topk(precompute_topk(teacher, triples, path=tmp_path / "b.safetensors", **kwargs))  # type: ignore[arg-type]
    assert torch.equal(a.indices, b.indices) and torch.equal(a.offsets, b.offsets)
