"""DSKD: the dual-space losses (without and with cross-model attention) against direct formulas,
their gradients and stop-gradients, and the recipe's step (projectors on the student) and defaults.

The alignment and the pair tokenizer are shared code (test_cross_tokenizer.py)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from reference_impls.core.data_sources import DatasetResponses
from reference_impls.core.models import build_decoder, build_student, build_teacher_config
from reference_impls.core.tokenizer import build_tokenizer
from reference_impls.core.training import make_dataloader
from reference_impls.losses import reverse_kl
from reference_impls.tasks.strings import make_split
from reference_impls.white_box.logits.dskd import (
    PROJECTORS,
    DSKDProjectors,
    DSKDStep,
    ModelOutputs,
    cross_model_attention,
    dskd_cma_loss,
    dskd_loss,
    dskd_recipe,
)

IGNORE = -100


# --- the losses ----------------------------------------------------------------------------------


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


# --- the recipe ----------------------------------------------------------------------------------


def test_recipe_defaults_are_the_authors_scripts() -> None:
    recipe = dskd_recipe()
    assert recipe.method_id == "dskd"
    assert recipe.hyperparameters == {"cross_model_attention": True, "kd_rate": 0.5, "kd_temperature": 2.0}
    assert isinstance(recipe.loss, DSKDStep) and isinstance(recipe.data, DatasetResponses)
    assert (recipe.loss.cross_model_attention, recipe.loss.kd_rate, recipe.loss.kd_temperature) == (
        True,
        0.5,
        2.0,
    )
    assert recipe.students.tokenizer == "pair"  # CMA aligns two tokenizations
    shared = dskd_recipe(cross_model_attention=False)
    assert shared.students.tokenizer is None and not shared.loss.cross_model_attention


def test_step_trains_projectors_on_the_student_and_equals_dskd_loss() -> None:
    tokenizer = build_tokenizer()
    student = build_student(tokenizer, 0)
    teacher = build_decoder(build_teacher_config(tokenizer), 1).eval()
    examples = make_split("train", 4)
    batch = next(
        iter(
            make_dataloader(
                tokenizer, [e.prompt for e in examples], [e.response for e in examples], batch_size=4
            )
        )
    )
    step = DSKDStep(cross_model_attention=False, kd_rate=0.3, kd_temperature=2.0)
    with pytest.raises(ValueError, match="prepare"):
        step(student, teacher, batch, None)
    step.prepare(student, teacher)
    projectors = getattr(student, PROJECTORS)
    assert projectors is step.projectors and projectors.query is None
    assert (projectors.t2s.in_features, projectors.t2s.out_features) == (128, 64)  # teacher → student width
    assert {f"{PROJECTORS}.s2t.weight", f"{PROJECTORS}.t2s.bias"} <= dict(student.named_parameters()).keys()
    got = step(student, teacher, batch, None)

    def outputs(model: torch.nn.Module) -> ModelOutputs:  # last hidden states and head, shifted once
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        return ModelOutputs(
            logits=out.logits[:, :-1],
            hidden=out.hidden_states[-1][:, :-1],
            labels=batch["labels"][:, 1:],
            head=model.get_output_embeddings().weight,
        )

    with torch.no_grad():
        teacher_out = outputs(teacher)
    expected = dskd_loss(outputs(student), teacher_out, projectors, kd_temperature=2.0, kd_rate=0.3).total
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got.backward()
    assert projectors.t2s.weight.grad is not None and projectors.s2t.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_a_dskd_run_saves_the_plain_student_without_its_projectors(tiny_run) -> None:
    """The projectors train with the student (attached to it) and are dropped before it is saved:
    the checkpoint loads with `from_pretrained` without unexpected keys."""
    from reference_impls.registry import get_method
    from reference_impls.run import RunConfig, run_recipe
    from reference_impls.teachers.embedded import QUICK_RECIPE

    result = run_recipe(get_method("dskd").build_recipe(), RunConfig(device="cpu", **tiny_run), teacher_recipe=QUICK_RECIPE)
    assert not [name for name in result.student.state_dict() if name.startswith("dskd_projectors")]
