"""benchmarks/peer_parity.py without installing anything: our side of the mappings on hand-computed
tensors, the pass/fail rule, the JSON report, the worker's file protocol and skipped peers."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from reference_impls.losses.divergences import forward_kl, generalized_jsd

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("peer_parity", REPO / "benchmarks" / "peer_parity.py")
assert SPEC is not None and SPEC.loader is not None
pp = importlib.util.module_from_spec(SPEC)
sys.modules["peer_parity"] = pp  # dataclasses look their module up
SPEC.loader.exec_module(pp)


def _two_positions() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Position 0: P = (1/2, 1/2), Q = (1/4, 3/4). Position 1 is masked and must not count.
    teacher = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])
    student = torch.tensor([[[0.0, math.log(3.0)], [-5.0, 5.0]]])
    return student, teacher, torch.tensor([[1, -100]])


def test_ce_form_is_our_forward_kl_plus_the_teacher_entropy() -> None:
    student, teacher, labels = _two_positions()
    ce = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert pp.teacher_entropy(teacher, labels).item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert forward_kl(student, teacher, labels).item() == pytest.approx(ce - math.log(2.0), rel=1e-6)
    assert pp.ce_form_forward_kl(student, teacher, labels).item() == pytest.approx(ce, rel=1e-6)
    assert forward_kl(student, teacher, labels, form="ce").item() == pytest.approx(ce, rel=1e-6)


def test_teacher_entropy_divides_by_the_temperature() -> None:
    teacher = torch.tensor([[0.0, 2 * math.log(3.0)]])  # at T = 2: P = (1/4, 3/4)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert pp.teacher_entropy(teacher, None, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_logits_of_projects_hidden_states_through_the_lm_head() -> None:
    x = {"student_hidden": torch.tensor([[1.0, 2.0]]), "student_weight": torch.tensor([[1.0, 0.0], [3.0, -1.0]])}
    assert pp.logits_of(x, "student").tolist() == [[1.0, 1.0]]


def test_every_case_of_every_peer_computes_a_finite_value_on_our_side() -> None:
    tensors = pp.make_inputs()
    for peer in pp.PEERS.values():
        for case in peer.cases():
            assert case.call in pp.WORKER_CALLS
            value = case.ours(pp.subset(tensors, case.inputs))
            assert torch.isfinite(value).all(), (peer.name, case.ours_name)


def test_trl_batchmean_without_labels_maps_to_our_sum_over_the_batch_size() -> None:
    (case,) = [c for c in pp.trl_cases() if c.options.get("labels") is False]
    x = pp.subset(pp.make_inputs(), case.inputs)
    per_position = generalized_jsd(x["student"], x["teacher"], beta=0.5, reduction="none")
    assert case.ours(x).item() == pytest.approx(per_position.sum().item() / per_position.shape[0], rel=1e-6)


def test_compare_passes_within_the_relative_tolerance_only() -> None:
    assert pp.compare([1.0], [1.0])["pass"]
    assert pp.compare([1.0 + 5e-6], [1.0])["pass"]
    assert not pp.compare([1.0 + 5e-5], [1.0])["pass"]
    assert pp.compare([0.0], [0.0]) == {"max_abs_diff": 0.0, "rel_diff": 0.0, "pass": True}
    assert not pp.compare([1e-3], [0.0])["pass"]
    assert pp.compare([2.0, 3.0], [2.0, 3.0 + 1e-3])["max_abs_diff"] == pytest.approx(1e-3)
    assert not pp.compare([1.0, 2.0], [1.0])["pass"]


def _fake_peer() -> Any:
    def cases() -> list[Any]:
        ours = lambda x: forward_kl(x["student"], x["teacher"], x["labels"])  # noqa: E731
        return [pp.Case("fake.loss", {"k": 1}, "a", "forward_kl", "fake ↔ forward_kl", ours),
                pp.Case("fake.loss", {"k": 2}, "a", "forward_kl", "fake ↔ forward_kl", ours)]

    return pp.Peer("fakepeer", "9.9", cases)


def _fake_worker(offset: float) -> Any:
    def worker(python: Path, peer: Any, tensors: dict[str, torch.Tensor], cases: list[Any]) -> dict[str, Any]:
        x = pp.subset(tensors, "a")
        value = forward_kl(x["student"], x["teacher"], x["labels"]).item()
        return {"version": "9.9", "torch": "2.13.0+cpu", "python": "3.11.7",
                "results": [{"values": [value]}, {"values": [value + offset]}]}

    return worker


def test_rows_and_report_with_a_fake_worker(tmp_path: Path) -> None:
    rows, state = pp.run_peer(_fake_peer(), tmp_path, pp.make_inputs(),
                              install=lambda peer, cache: Path("python"), worker=_fake_worker(1e-3))
    assert state == {"status": "ran", "version": "9.9", "torch": "2.13.0+cpu", "python": "3.11.7",
                     "install": "fakepeer==9.9", "cases": 2, "failed": 1}
    assert [row["pass"] for row in rows] == [True, False]
    assert rows[0]["shapes"] == {"student": [2, 5, 11], "teacher": [2, 5, 11], "labels": [2, 5]}
    assert rows[1]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    skipped = {"status": "skipped", "version": "1.0", "reason": "ERROR: nope"}
    report = pp.write_report(tmp_path / "out" / "parity.json", rows, {"fakepeer": state, "other": skipped})
    on_disk = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert on_disk == report
    assert set(on_disk) >= {"date", "python", "torch", "tolerance", "summary", "peers", "cases", "skipped"}
    assert on_disk["summary"] == {"cases": 2, "passed": 1, "failed": 1, "skipped_peers": ["other"]}
    assert on_disk["skipped"] == [{"peer": "other", "version": "1.0", "reason": "ERROR: nope"}]
    row = on_disk["cases"][0]
    for key in ("peer", "peer_version", "peer_function", "ours", "mapping", "shapes", "max_abs_diff", "pass"):
        assert key in row


def test_a_peer_error_in_one_case_fails_that_case() -> None:
    case = _fake_peer().cases()[0]
    row = pp.case_record(_fake_peer(), "9.9", case, pp.make_inputs(), {"error": "TypeError: bad"})
    assert row["pass"] is False and row["error"] == "TypeError: bad"


def test_a_peer_that_cannot_install_is_skipped_with_the_reason(tmp_path: Path) -> None:
    def install(peer: Any, cache: Path) -> Path:
        raise pp.PeerUnavailable("ERROR: No matching distribution found for fakepeer==9.9")

    rows, state = pp.run_peer(_fake_peer(), tmp_path, pp.make_inputs(), install=install)
    assert rows == []
    assert state == {"status": "skipped", "version": "9.9",
                     "reason": "ERROR: No matching distribution found for fakepeer==9.9"}


def test_a_peer_that_cannot_import_is_skipped_by_the_real_worker(tmp_path: Path) -> None:
    # The worker protocol end to end, in our own venv, for a distribution that is not installed.
    peer = pp.Peer("kdatlas-no-such-peer", "0.0", _fake_peer().cases)
    rows, state = pp.run_peer(peer, tmp_path, pp.make_inputs(), install=lambda p, c: Path(sys.executable))
    assert rows == [] and state["status"] == "skipped"
    assert "PackageNotFoundError" in state["reason"]


def test_the_worker_reads_tensors_and_writes_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def call(x: dict[str, torch.Tensor], options: dict[str, Any]) -> torch.Tensor:
        return forward_kl(x["student"], x["teacher"], x["labels"], temperature=options["t"])

    monkeypatch.setitem(pp.WORKER_CALLS, "fake.loss", call)
    monkeypatch.setitem(pp.IMPORTS, "torch", ["torch.nn.functional"])
    tensors = pp.make_inputs()
    torch.save(tensors, tmp_path / "inputs.pt")
    cases = [{"call": "fake.loss", "options": {"t": 2.0}, "inputs": "b"},
             {"call": "fake.loss", "options": {}, "inputs": "b"}]
    (tmp_path / "cases.json").write_text(json.dumps({"peer": "torch", "cases": cases}))
    pp.worker_main(tmp_path)
    answer = json.loads((tmp_path / "answer.json").read_text())
    x = pp.subset(tensors, "b")
    assert answer["version"] == torch.__version__
    assert answer["results"][0]["values"] == [forward_kl(x["student"], x["teacher"], x["labels"], temperature=2.0).item()]
    assert answer["results"][1]["error"].startswith("KeyError")


def test_error_line_picks_the_message() -> None:
    pip = "WARNING: Location 'x' is ignored\nERROR: Could not find a version that satisfies nope==1\nERROR: No matching"
    assert pp.error_line(pip) == "ERROR: Could not find a version that satisfies nope==1"
    versions = "ERROR: Could not find a version that satisfies the requirement trl==0.0.0 (from versions: 0.0.1, 0.0.2)"
    assert pp.error_line(versions) == "ERROR: Could not find a version that satisfies the requirement trl==0.0.0"
    trace = ('Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n'
             "    raise ImportError(\nImportError: \n        torchao not installed.\n")
    assert pp.error_line(trace) == "ImportError: torchao not installed."
    assert pp.error_line("") == "no output"


def test_the_cli_rejects_an_unknown_peer_and_returns_1_on_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exit_:
        pp.main(["--peers", "nope"])
    assert exit_.value.code == 2
    failing = {"pass": False, "ours": "o", "peer_function": "f", "peer_options": {}, "inputs": "a", "max_abs_diff": 1.0}
    state = {"status": "ran", "version": "1", "cases": 1, "failed": 1}
    monkeypatch.setattr(pp, "run_peer", lambda peer, cache, tensors: ([failing], state))
    out = tmp_path / "r.json"
    assert pp.main(["--peers", "trl", "--out", str(out), "--cache", str(tmp_path)]) == 1
    assert json.loads(out.read_text())["summary"]["failed"] == 1
    monkeypatch.setattr(pp, "run_peer", lambda peer, cache, tensors: ([], {"status": "skipped", "version": "1",
                                                                           "reason": "ERROR: x"}))
    assert pp.main(["--peers", "trl", "--out", str(out), "--cache", str(tmp_path)]) == 0



def test_cases_fall_into_the_groups_entries_name() -> None:
    gkd = "trl.experimental.gkd.gkd_trainer.GKDTrainer.generalized_jsd_loss"
    assert [pp.case_group("trl", gkd, {"beta": b}, "generalized_jsd") for b in (0.0, 0.5, 1.0)] == [
        "trl-forward-kl", "trl-jsd", "trl-reverse-kl"
    ]
    assert pp.case_group("torchtune", "torchtune.modules.loss", {}, "forward_kl + teacher_entropy") == "torchtune-forward-kl"
    assert pp.case_group("torchtune", "torchtune.modules.loss", {}, "0.3·forward_kl(form='ce') + 0.7·reverse_kl") == "torchtune-symmetric-kl"
    assert pp.case_group("textbrewer", "textbrewer.losses.kd_ce_loss", {}, "forward_kl") == "textbrewer-kd-ce"
