"""A run is a real run, through the command line as users start it: killed with SIGKILL and
resumed it ends with the weights of an uninterrupted run; two processes under ``accelerate
launch`` on the CPU (gloo; ``--multi_gpu --num_processes 2`` with ``--device cpu``: Accelerate's
``--cpu`` flag starts several processes only through MPI) train one white-box and one black-box
method; bf16 autocast and the
TensorBoard tracker work. The embedded teachers are the shipped ones: nothing here trains one.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

KDATLAS = [sys.executable, "-m", "kdatlas"]
LAUNCH_TWO = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "kdatlas",
]  # fmt: skip
SMALL = ["--sft-steps", "10", "--eval-size", "8", "--device", "cpu", "--no-progress"]


def _env(cache: Path) -> dict[str, str]:
    # One thread per process: the two processes of a launch share the two cores, and float
    # reductions depend on the thread count, so every compared run uses the same.
    return {**os.environ, "KDATLAS_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _run(command: list[str], cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=_env(cache), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "student" / "model.safetensors")


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["run", "forward-kl", "--steps", "160", "--checkpoint-every", "20", *SMALL]
    _run([*KDATLAS, *args, "--out", str(tmp_path / "whole")], cache)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*KDATLAS, *args, "--out", str(killed)], env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    phase = killed / "checkpoints" / "distilled-student-forward-kl"
    deadline = time.monotonic() + 240
    while not (phase / "step-000040").exists():  # mid-way through the distilled student's training
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists() and not (killed / "student").exists()

    done = _run([*KDATLAS, "run", "--resume", str(killed), "--no-progress"], cache)
    assert "run directory" in done.stdout
    whole, resumed = _weights(tmp_path / "whole"), _weights(killed)
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", killed)]
    assert metrics[0] == metrics[1]
    assert not (killed / "checkpoints").exists()  # removed once the results are written

    refused = subprocess.run(
        [*KDATLAS, "run", "--resume", str(killed)], env=_env(cache), capture_output=True, text=True
    )
    assert refused.returncode == 2 and "has finished" in " ".join(refused.stderr.split())


def test_resume_refuses_other_options_and_non_run_folders(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "request.json").write_text(
        json.dumps({"method_id": "forward-kl", "overrides": {}, "source": None, "config": {"steps": 5}})
    )
    cases = {
        ("run", "--resume", str(tmp_path)): "not a run directory",
        ("run", "reverse-kl", "--resume", str(tmp_path / "run")): "a run of 'forward-kl', not 'reverse-kl'",
        ("run", "--resume", str(tmp_path / "run"), "--steps", "9"): "drop steps",
    }
    for command, message in cases.items():
        done = subprocess.run([*KDATLAS, *command], env=_env(tmp_path / "c"), capture_output=True, text=True)
        assert done.returncode == 2 and message in " ".join(done.stderr.split()), done.stderr


def test_two_processes_train_as_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    """DDP with exact token normalisation: 2 processes × 16 sequences is one step over the same 32
    sequences as 1 process × 32, so the students agree up to float reduction order.

    Within one epoch: 8 steps × 32 of the suite's 300 training examples. At an epoch's end the two
    part ways, as in every Accelerate loop: the last, short batch is evened out across processes
    with rows from the epoch's start (``even_batches``), where one process takes it as it is.
    """
    cache = tmp_path / "cache"
    common = ["run", "forward-kl", *SMALL, "--steps", "8", "--sft-steps", "8"]
    _run([*LAUNCH_TWO, *common, "--batch-size", "16", "--out", str(tmp_path / "two")], cache)
    _run([*KDATLAS, *common, "--batch-size", "32", "--out", str(tmp_path / "one")], cache)
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["processes"] == 2
    two, one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    gap = max(float((two[name] - one[name]).abs().max()) for name in one)
    assert gap < 1e-4  # Adam's normalised steps magnify reduction-order bits in tiny gradients
    # The control: half the batch on one process trains a measurably different student.
    _run([*KDATLAS, *common, "--batch-size", "16", "--out", str(tmp_path / "half")], cache)
    half = _weights(tmp_path / "half")
    assert max(float((half[name] - one[name]).abs().max()) for name in one) > 100 * max(gap, 1e-6)


def test_a_black_box_pipeline_runs_on_two_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "alpaca"
    command = [*LAUNCH_TWO, "run", "alpaca", "--steps", "12", "--eval-size", "8", "--set", "num_instructions=16"]
    _run([*command, "--device", "cpu", "--no-progress", "--out", str(run_dir)], tmp_path / "cache")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["processes"] == 2 and config["pipeline"]["training_examples"] > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "baseline", "distilled"}
    assert (run_dir / "student" / "README.md").exists() and _weights(run_dir)


def _tensorboard_scalars(logs: Path) -> dict[str, list[float]]:
    """Scalars of the TFRecord event files under ``logs`` (length, crc, Event proto, crc)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[float]] = {}
    for path in logs.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(value.simple_value)
    return scalars


def test_bf16_autocast_and_the_tensorboard_curves(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    run_dir = tmp_path / "bf16"
    command = ["run", "forward-kl", "--steps", "12", *SMALL, "--precision", "bf16", "--log-with", "tensorboard"]
    _run([*KDATLAS, *command, "--out", str(run_dir)], tmp_path / "cache")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["precision"] == "bf16"
    curves = json.loads((run_dir / "curves.json").read_text())
    assert all(torch.isfinite(torch.tensor(curve)).all() for curve in curves.values())
    scalars = _tensorboard_scalars(run_dir / "logs")
    assert len(scalars["distilled-student-forward-kl/loss"]) == 12
    assert scalars["distilled-student-forward-kl/loss"] == pytest.approx(curves["distilled"], rel=1e-6)
    assert "warm-start-supervised-fine-tuning-shared/lr" in scalars
