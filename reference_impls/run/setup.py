"""What both suites set up the same way from a `RunConfig`: the accelerator and the checkpoints.

The accelerator places models and data (``accelerate launch`` for several processes), applies
the mixed precision and holds the trackers the training loop logs its curves to.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState

from reference_impls.core.checkpoints import RunCheckpoints
from reference_impls.core.recipe import RunConfig

PRECISIONS = ("auto", "fp32", "bf16")


def check_device(config: RunConfig) -> None:
    """Raise for a device or precision the config cannot have on this machine."""
    if config.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {config.device!r}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no GPU is available — use --device cpu")
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    if config.gradient_accumulation < 1:
        raise ValueError(f"gradient_accumulation must be ≥ 1, got {config.gradient_accumulation}")


def on_gpu(config: RunConfig) -> bool:
    return config.device != "cpu" and torch.cuda.is_available()


def distributed_state(config: RunConfig) -> PartialState:
    """The process group of the launch (one process without ``accelerate launch``/``torchrun``).

    On a machine without a GPU the CPU must be named at the first call: then several processes
    join one gloo group, as with ``accelerate launch --multi_gpu --num_processes 2 … --device cpu``
    (Accelerate's own ``--cpu`` flag starts several processes only through MPI).
    """
    return PartialState(cpu=not on_gpu(config))


def mixed_precision(config: RunConfig) -> str:
    """Accelerate's ``mixed_precision`` for the config: ``"bf16"`` or ``"no"``."""
    if config.precision == "auto":
        return "bf16" if on_gpu(config) and torch.cuda.is_bf16_supported() else "no"
    return "bf16" if config.precision == "bf16" else "no"


def trackers(config: RunConfig) -> list[str]:
    """The Accelerate trackers to log to: ``auto`` is TensorBoard when it is installed (and a
    logging folder is set)."""
    if config.log_with == "none":
        return []
    if config.log_with == "auto":
        installed = any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX"))
        return ["tensorboard"] if installed and config.logging_dir else []
    if config.logging_dir is None and config.log_with == "tensorboard":
        raise ValueError("log_with='tensorboard' needs a logging_dir (kdatlas run sets <run dir>/logs)")
    return [config.log_with]


def make_accelerator(config: RunConfig, project: str) -> Accelerator:
    """The run's accelerator, its trackers started under ``project`` (the method id)."""
    check_device(config)
    log_with = trackers(config)
    distributed_state(config)
    accelerator = Accelerator(
        cpu=not on_gpu(config),
        mixed_precision=mixed_precision(config),
        log_with=log_with or None,
        project_dir=config.logging_dir,
    )
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads(accelerator.num_processes))
    if log_with:
        accelerator.init_trackers(project)
    return accelerator


def make_checkpoints(config: RunConfig) -> RunCheckpoints | None:
    return None if config.checkpoint_dir is None else RunCheckpoints(Path(config.checkpoint_dir), config.checkpoint_every)


def cpu_threads(processes: int) -> int:
    """The cores this process may use, shared evenly between the processes of a launch."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // processes)
