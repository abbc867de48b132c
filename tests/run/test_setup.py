"""The run's accelerator settings from a RunConfig: precision, trackers, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impls.core.recipe import RunConfig
from reference_impls.run import setup


def test_precision_auto_is_fp32_on_cpu_and_bf16_when_asked() -> None:
    assert setup.mixed_precision(RunConfig(device="cpu")) == "no"
    assert setup.mixed_precision(RunConfig(device="cpu", precision="fp32")) == "no"
    assert setup.mixed_precision(RunConfig(device="cpu", precision="bf16")) == "bf16"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (RunConfig(precision="fp16"), "precision must be one of auto, fp32, bf16"),
        (RunConfig(device="tpu"), "device must be"),
        (RunConfig(gradient_accumulation=0), "gradient_accumulation must be ≥ 1"),
    ],
)
def test_bad_settings_are_refused_with_the_choices(config: RunConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        setup.check_device(config)


def test_trackers_tensorboard_when_installed_and_a_folder_is_set(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    assert setup.trackers(RunConfig(logging_dir=str(tmp_path))) == ["tensorboard"]
    assert setup.trackers(RunConfig()) == []  # no folder (a library call): nothing logged
    assert setup.trackers(RunConfig(log_with="none", logging_dir=str(tmp_path))) == []
    assert setup.trackers(RunConfig(log_with="wandb")) == ["wandb"]
    with pytest.raises(ValueError, match="needs a logging_dir"):
        setup.trackers(RunConfig(log_with="tensorboard"))


def test_checkpoints_only_with_a_folder(tmp_path: Path) -> None:
    assert setup.make_checkpoints(RunConfig()) is None
    checkpoints = setup.make_checkpoints(RunConfig(checkpoint_dir=str(tmp_path), checkpoint_every=7))
    assert checkpoints.root == tmp_path and checkpoints.every == 7
