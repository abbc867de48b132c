"""Every implemented method end to end on the embedded defaults (tiny budgets: mechanics).

The quality claim — the distilled student ends closer to the teacher than the baseline with the
real budget — is checked by the slow test at the end and measured in benchmarks/run_times.py.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from kdatlas.runner import RunError, build_recipe, run_method
from kdatlas.taxonomy import load_taxonomy
from reference_impls.registry import registered_methods
from reference_impls.run import RunConfig, run_recipe
from reference_impls.run.encoders import CLASSIFICATION_METRICS
from reference_impls.run.scoring import SUITE_METRICS, reported_metrics
from reference_impls.teachers.embedded import QUICK_RECIPE
from reference_impls.teachers.encoder import QUICK_ENCODER_RECIPE
from tests.support.metrics import expected_names

REPO = Path(__file__).resolve().parents[2]
USER_CACHE = os.environ.get("KDATLAS_CACHE")  # before the autouse fixture replaces it
IMPLEMENTED = sorted(registered_methods())
# Black-box pipelines run through their own harness (tests/black_box/test_pipeline.py and
# test_pipeline_methods_run_end_to_end below); the rest train on logits or teacher text.
PIPELINES = [
    m for m in IMPLEMENTED if registered_methods()[m].module.startswith("reference_impls.black_box.")
]
# The encoder (BERT-era) methods run on the classification suite with the encoder teachers.
ENCODERS = [m for m in IMPLEMENTED if m not in PIPELINES and build_recipe(m, {}).evaluation == "classification"]
WHITE_BOX = [m for m in IMPLEMENTED if m not in PIPELINES and m not in ENCODERS]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    # One cache for the module: the quick teacher and the baseline are trained once.
    root = tmp_path_factory.getbasetemp() / "methods-cache"
    monkeypatch.setenv("KDATLAS_CACHE", str(root))
    return root


def test_every_implemented_entry_is_registered_and_vice_versa() -> None:
    taxonomy, problems = load_taxonomy(REPO)
    assert not problems
    implemented = {e.id for e in taxonomy.entries.values() if e.status.value == "implemented"}
    assert implemented == set(IMPLEMENTED)


@pytest.mark.parametrize("method_id", WHITE_BOX)
def test_method_runs_end_to_end(method_id: str, tiny_run: dict[str, Any]) -> None:
    recipe = build_recipe(method_id, {})
    assert recipe.method_id == method_id
    result = run_recipe(recipe, RunConfig(device="cpu", **tiny_run), teacher_recipe=QUICK_RECIPE)
    assert set(result.metrics) == {"teacher", "baseline", "distilled"}
    across_vocabularies = recipe.students.cross_tokenizer  # distances to the teacher are undefined there
    for role, metrics in result.metrics.items():
        names = set(reported_metrics(suite=True))
        if across_vocabularies and role != "teacher":
            names = {"exact_match", "rouge_l", *SUITE_METRICS}
        assert set(metrics) == expected_names(metrics, names), role
    assert len(result.curves["distilled"]) == 2
    assert all(loss == loss for loss in result.curves["distilled"]), "NaN loss"
    assert result.config["hyperparameters"] == registered_methods()[method_id].defaults()


@pytest.mark.parametrize("method_id", PIPELINES)
def test_pipeline_methods_run_end_to_end(method_id: str, tmp_path: Path) -> None:
    """Every black-box method's default pipeline, against the exact oracle teacher, a few steps."""
    from reference_impls.black_box.pipeline import EVALUATIONS
    from reference_impls.run import RunConfig, run_recipe
    from tests.support.fakes import OracleTeacher

    # The default pipeline, with its data size cut to keep the test short.
    sizes = (
        "num_instructions",
        "num_tasks",
        "num_queries",
        "num_passages",
        "num_conversations",
        "num_initial",
    )
    defaults = registered_methods()[method_id].defaults()
    overrides = {name: "60" for name in sizes if name in defaults}
    if "score_ceiling" in defaults:
        # A scorer trained for a few steps puts most IFDs above the paper's ceiling of 1 (the
        # selection then rightly keeps nothing); lift it so the run reaches training.
        overrides["score_ceiling"] = "1000"
    if "keep_rejected_responses" in defaults:
        # The oracle's answers are already right, so its reflection rewrites none of them.
        overrides["keep_rejected_responses"] = "true"
    recipe = build_recipe(method_id, overrides)
    config = RunConfig(device="cpu", steps=4, eval_size=16, cache=str(tmp_path / "c.jsonl"), progress=False)
    result = run_recipe(recipe, config, teacher=OracleTeacher())
    assert set(result.metrics) == {"teacher", "baseline", "distilled"}
    assert result.metrics["teacher"]["exact_match"] == 1.0  # the oracle, scored exactly
    assert result.data and result.config["hyperparameters"] == dict(recipe.hyperparameters)
    # Every evaluation has a longer-input OOD split, scored for all three; the oracle is exact there too.
    assert EVALUATIONS[recipe.evaluation].ood is not None
    assert all({"ood_exact_match", "ood_rouge_l"} <= set(result.metrics[role]) for role in result.metrics)
    assert result.metrics["teacher"]["ood_exact_match"] == 1.0


def test_overrides_reach_the_recipe() -> None:
    recipe = build_recipe("generalized-jsd", {"beta": "0.9", "temperature": "2"})
    assert recipe.hyperparameters == {"beta": 0.9, "temperature": 2.0}


@pytest.mark.parametrize(
    ("method_id", "override", "fragment"),
    [
        ("generalized-jsd", {"beta": "1.5"}, "beta"),
        ("vanilla-kd", {"temperature": "0"}, "temperature"),
        ("seqkd", {"decoding": "beam"}, "greedy"),
    ],
)
def test_bad_hyperparameters_fail_before_any_training(
    method_id: str, override: dict[str, str], fragment: str
) -> None:
    with pytest.raises(RunError, match=fragment):
        build_recipe(method_id, override)


def test_run_method_writes_the_run_directory(tmp_path: Path, tiny_run: dict[str, Any]) -> None:
    out = tmp_path / "run"
    console = Console(record=True, width=120)
    config = RunConfig(device="cpu", **tiny_run)
    result = run_method("forward-kl", config, out=out, console=console, teacher_recipe=QUICK_RECIPE)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "baseline", "distilled"}
    assert set(metrics["distilled"]) == expected_names(metrics["distilled"], reported_metrics(suite=True))
    config = json.loads((out / "config.json").read_text())
    assert config["method_id"] == "forward-kl" and config["hyperparameters"] == {"temperature": 1.0}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = console.export_text()
    assert "token KL(teacher‖student)" in shown and "distilled student" in shown
    assert "closer to the teacher" in shown  # the verdict sentence
    # The distilled student is kept: a Hugging Face checkpoint that generates as the run's student did.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reference_impls.core.generation import generate_responses
    from reference_impls.tasks.strings import make_split

    student = AutoModelForCausalLM.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    prompts = [e.prompt for e in make_split("test", 14)]
    kept = generate_responses(student, tokenizer, prompts, max_new_tokens=8)
    assert kept == generate_responses(result.student, result.tokenizer, prompts, max_new_tokens=8)
    card = (out / "student" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "kdatlas run forward-kl" in card
    assert "arXiv:1503.02531" in card  # Hinton et al., from the verified bibliography
    assert f"| exact_match | {metrics['teacher']['exact_match']:.4f} |" in card


def test_run_method_writes_a_pipeline_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.fakes import OracleTeacher

    monkeypatch.setenv("KDATLAS_CACHE", str(tmp_path / "cache"))  # a fresh response cache
    out = tmp_path / "run"
    console = Console(record=True, width=120)
    config = RunConfig(device="cpu", steps=2, progress=False)
    run_method(
        "alpaca",
        config,
        out=out,
        overrides={"num_instructions": "20"},
        console=console,
        teacher=OracleTeacher(),
    )
    assert set(json.loads((out / "metrics.json").read_text())) == {"teacher", "baseline", "distilled"}
    data = (out / "data.jsonl").read_text().splitlines()
    assert len(data) >= 20 and json.loads(data[0])["segments"][1][1] is True  # the answer is supervised
    card = (out / "student" / "README.md").read_text()  # the distilled student is kept, with its card
    assert (out / "student" / "model.safetensors").is_file() and "(`taori2023alpaca`)" in card
    assert {"baseline", "data", "distill", "total"} <= set(json.loads((out / "seconds.json").read_text()))
    shown = console.export_text()
    assert "alpaca: data pipeline" in shown and "teacher requests" in shown  # the counts table
    assert "seed-only baseline in exact match" in shown  # the verdict sentence


@pytest.mark.slow
def test_default_budget_brings_the_student_closer_to_the_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim every method page makes, with the real embedded teacher and default budget.

    Uses the user's cache (``$KDATLAS_CACHE`` or ``~/.cache/kdatlas``) like ``kdatlas run``: the
    first run on a machine trains the teacher (under 2 minutes), later runs reuse it.
    """
    if USER_CACHE is None:
        monkeypatch.delenv("KDATLAS_CACHE")
    else:
        monkeypatch.setenv("KDATLAS_CACHE", USER_CACHE)
    result = run_recipe(build_recipe("forward-kl", {}), RunConfig(device="cpu", progress=False))
    teacher, baseline, distilled = (result.metrics[role] for role in ("teacher", "baseline", "distilled"))
    assert distilled["token_kl_to_teacher"] < baseline["token_kl_to_teacher"]
    assert teacher["exact_match"] >= 0.7  # the tiny teacher is good, not perfect (see teacher.py)


def test_baseline_and_distilled_share_start_data_and_budget(tiny_run: dict[str, Any]) -> None:
    """A 'distillation' whose objective is the baseline's cross-entropy reproduces the baseline
    exactly: both students start from the same warm start and see the same batches."""
    from reference_impls.core.data_sources import DatasetResponses
    from reference_impls.core.recipe import Recipe
    from reference_impls.core.training import cross_entropy_objective

    recipe = Recipe("plain-ce", data=DatasetResponses(), loss=cross_entropy_objective)
    config = RunConfig(device="cpu", **{**tiny_run, "steps": 3, "sft_steps": 3})
    result = run_recipe(recipe, config, teacher_recipe=QUICK_RECIPE)
    assert result.curves["distilled"] == pytest.approx(result.curves["baseline"])
    assert result.metrics["distilled"] == pytest.approx(result.metrics["baseline"])


@pytest.mark.parametrize(
    ("distilled", "expected"),
    [
        ((0.5, 0.5, 0.5), "is closer to the teacher than the baseline (forward KL 0.5000 vs 1.0000"),
        (
            (1.5, 0.5, 1.5),
            "closer to the teacher by reverse KL 0.5000 vs 1.0000, but not by forward KL 1.5000",
        ),
        ((1.5, 1.5, 1.5), "is NOT closer"),
    ],
)
def test_verdict_reports_every_distance_honestly(
    distilled: tuple[float, float, float], expected: str
) -> None:
    from kdatlas.runner import verdict

    def row(values: tuple[float, float, float]) -> dict[str, float]:
        names = ("token_kl_to_teacher", "token_reverse_kl_to_teacher", "token_tvd_to_teacher")
        return dict(zip(names, values, strict=True))

    assert expected in verdict({"baseline": row((1.0, 1.0, 1.0)), "distilled": row(distilled)})


@pytest.mark.parametrize(
    ("distilled", "expected"),
    [((0.3, 0.6), "better than"), ((0.1, 0.4), "worse than"), ((0.3, 0.4), "mixed against")],
)
def test_verdict_across_vocabularies_uses_task_metrics(distilled: tuple[float, float], expected: str) -> None:
    from kdatlas.runner import verdict

    baseline = {"exact_match": 0.2, "rouge_l": 0.5}
    sentence = verdict({"baseline": baseline, "distilled": dict(zip(baseline, distilled, strict=True))})
    assert "undefined across vocabularies" in sentence and expected in sentence


def test_cross_tokenizer_methods_train_a_student_with_its_own_tokenizer(
    tiny_run: dict[str, Any], tmp_path: Path
) -> None:
    """ULD and DSKD-CMA: the embedded student uses the 'pair' tokenizer; its batches carry both
    tokenizations, and no token distance to the teacher is reported (undefined across vocabularies)."""
    from reference_impls.core.tokenizer import build_pair_tokenizer

    for method_id in ("uld", "dskd"):
        recipe = build_recipe(method_id, {})
        result = run_recipe(recipe, RunConfig(device="cpu", **tiny_run), teacher_recipe=QUICK_RECIPE)
        # The golden and robustness metrics are about text, so they hold across vocabularies.
        distilled = result.metrics["distilled"]
        assert set(distilled) == expected_names(distilled, {"exact_match", "rouge_l", *SUITE_METRICS})
        assert "token_kl_to_teacher" in result.metrics["teacher"]
        assert all(math.isfinite(x) for x in result.curves["distilled"])
    # A shared-vocabulary student is refused by token-level methods, accepted by the cross-tokenizer ones.
    student_dir = tmp_path / "pair-student"
    pair = build_pair_tokenizer()
    from reference_impls.core.models import build_decoder, build_student_config

    build_decoder(build_student_config(pair), 0).save_pretrained(student_dir)
    pair.save_pretrained(student_dir)
    with pytest.raises(ValueError, match="cross-tokenizer method: `uld` or `dskd`"):
        run_recipe(
            build_recipe("forward-kl", {}),
            RunConfig(device="cpu", student=str(student_dir), **tiny_run),
            teacher_recipe=QUICK_RECIPE,
        )
    result = run_recipe(
        build_recipe("uld", {}),
        RunConfig(device="cpu", student=str(student_dir), **tiny_run),
        teacher_recipe=QUICK_RECIPE,
    )
    distilled = result.metrics["distilled"]
    assert set(distilled) == expected_names(distilled, {"exact_match", "rouge_l", *SUITE_METRICS})


def test_entry_hyperparameter_defaults_match_the_code() -> None:
    """A default the page states for a recipe option is the one `kdatlas run` uses."""
    taxonomy, _ = load_taxonomy(REPO)
    mismatches = []
    for method_id, registration in registered_methods().items():
        defaults = registration.defaults()
        for hyperparameter in taxonomy.entries[method_id].hyperparameters:
            if hyperparameter.name in defaults and hyperparameter.default != defaults[hyperparameter.name]:
                mismatches.append(
                    (method_id, hyperparameter.name, hyperparameter.default, defaults[hyperparameter.name])
                )
    assert mismatches == []


def test_offline_topk_with_the_whole_vocabulary_reproduces_online_distillation(
    tiny_run: dict[str, Any],
) -> None:
    """k = V stores the teacher's full distribution: training from the file without any teacher
    forward pass gives the online forward-KL run's loss curve."""
    from reference_impls.core.tokenizer import build_tokenizer

    vocab = len(build_tokenizer())
    online = run_recipe(
        build_recipe("forward-kl", {}), RunConfig(device="cpu", **tiny_run), teacher_recipe=QUICK_RECIPE
    )
    offline = run_recipe(
        build_recipe("forward-kl", {}),
        RunConfig(device="cpu", teacher_topk=vocab, **tiny_run),
        teacher_recipe=QUICK_RECIPE,
    )
    assert offline.curves["distilled"] == pytest.approx(online.curves["distilled"], rel=1e-4, abs=1e-5)
    assert offline.config["teacher_signals"]["offline_topk"] == vocab
    truncated = run_recipe(
        build_recipe("forward-kl", {}),
        RunConfig(device="cpu", teacher_topk=4, **tiny_run),
        teacher_recipe=QUICK_RECIPE,
    )
    assert all(math.isfinite(x) for x in truncated.curves["distilled"])
    with pytest.raises(ValueError, match="token-level forward or reverse KL"):
        run_recipe(
            build_recipe("gkd", {}),
            RunConfig(device="cpu", teacher_topk=4, **tiny_run),
            teacher_recipe=QUICK_RECIPE,
        )


@pytest.fixture(scope="module")
def local_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A teacher and a student saved with `save_pretrained`, as a user's local checkpoints are."""
    from reference_impls.core.models import build_decoder, build_student_config
    from reference_impls.teachers.embedded import load_or_train_teacher

    root = tmp_path_factory.mktemp("local-models")
    teacher, tokenizer = load_or_train_teacher("cpu", progress=False, recipe=QUICK_RECIPE)
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    build_decoder(build_student_config(tokenizer), 0).save_pretrained(root / "student")
    tokenizer.save_pretrained(root / "student")
    return str(root / "teacher"), str(root / "student")


# Black-box pipelines take --teacher/--student paths through RunConfig; the HTTP test in
# test_blackbox_integration covers their non-embedded teacher path.
@pytest.mark.parametrize("method_id", WHITE_BOX)
def test_method_runs_on_local_checkpoints(
    method_id: str, tiny_run: dict[str, Any], local_models: tuple[str, str]
) -> None:
    """The real-model path (`--teacher PATH --student PATH`) for every method, on saved tiny models."""
    teacher, student = local_models
    config = RunConfig(device="cpu", teacher=teacher, student=student, **tiny_run)
    result = run_recipe(build_recipe(method_id, {}), config)
    assert result.config["teacher"]["id"].startswith(teacher) and result.config["student"]["id"].startswith(
        student
    )
    assert {"exact_match", "rouge_l"} <= set(result.metrics["distilled"])
    assert all(math.isfinite(x) for x in result.curves["distilled"])


@pytest.mark.parametrize("method_id", ENCODERS)
def test_encoder_method_runs_end_to_end(method_id: str, tiny_run: dict[str, Any]) -> None:
    """Every encoder method on the classification suite (a few-step encoder teacher): its three
    rows scored, a finite curve, and a saved student without the projectors it trained with."""
    recipe = build_recipe(method_id, {})
    config = RunConfig(device="cpu", **{**tiny_run, "steps": 4})
    result = run_recipe(recipe, config, teacher_recipe=QUICK_ENCODER_RECIPE)
    assert all(set(result.metrics[role]) == set(CLASSIFICATION_METRICS) for role in ("teacher", "baseline", "distilled"))
    assert result.metrics["teacher"]["teacher_agreement"] == 1.0
    assert result.config["evaluation"]["name"] == "classification"  # the board files the row under its suite
    assert len(result.curves["distilled"]) == 4 and all(math.isfinite(x) for x in result.curves["distilled"])
    assert result.config["hyperparameters"] == registered_methods()[method_id].defaults()
    assert "hint_projectors" not in dict(result.student.named_children())


@pytest.fixture(scope="module")
def local_encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """An encoder teacher and student saved with `save_pretrained`, as a user's checkpoints are."""
    from transformers import AutoModelForSequenceClassification

    from reference_impls.core.models import build_encoder_config
    from reference_impls.tasks.strings import TASK_NAMES
    from reference_impls.teachers.encoder import load_or_train_encoder_teachers

    root = tmp_path_factory.mktemp("local-encoders")
    _, teacher, tokenizer = load_or_train_encoder_teachers("cpu", progress=False, recipe=QUICK_ENCODER_RECIPE)
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    student = AutoModelForSequenceClassification.from_config(
        build_encoder_config(tokenizer, num_labels=len(TASK_NAMES), teacher=False)
    )
    student.save_pretrained(root / "student")
    return str(root / "teacher"), str(root / "student")


@pytest.mark.parametrize("method_id", ENCODERS)
def test_encoder_method_runs_on_local_checkpoints(
    method_id: str, tiny_run: dict[str, Any], local_encoders: tuple[str, str]
) -> None:
    """The real-model path for the encoder methods: local sequence classifiers as teacher and student."""
    teacher, student = local_encoders
    result = run_recipe(build_recipe(method_id, {}), RunConfig(device="cpu", teacher=teacher, student=student, **tiny_run))
    assert result.config["teacher"]["id"].startswith(teacher) and result.config["student"]["id"].startswith(student)
    assert set(result.metrics["distilled"]) == set(CLASSIFICATION_METRICS)
    assert all(math.isfinite(x) for x in result.curves["distilled"])


def test_encoder_runs_refuse_options_that_do_not_apply(tiny_run: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="--data does not apply"):
        run_recipe(build_recipe("pkd", {}), RunConfig(device="cpu", data="x.jsonl", **tiny_run))
    with pytest.raises(ValueError, match="EncoderTeacherRecipe"):
        run_recipe(build_recipe("pkd", {}), RunConfig(device="cpu", **tiny_run), teacher_recipe=QUICK_RECIPE)
