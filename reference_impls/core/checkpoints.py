"""Checkpoints of a run's training phases: a killed run resumes and ends with the same weights.

A run trains several times in a row (the shared warm start, the baseline, the distilled student,
and whatever a pipeline trains inside). `RunCheckpoints` gives each training phase its own
folder, named after the phase's description (``distilled-student-forward-kl``; a repeated
description gets ``-2``, ``-3``), and `train_student` saves into it every ``every`` optimizer
steps and once more at the end:

* ``model.safetensors``: the student (with anything a step loss attached to it, e.g. DSKD's
  projectors) — main process;
* ``optimizer.pt``: optimizer and learning-rate schedule, and the step count — main process;
* ``process-<rank>.pt``: what each process holds alone: its loss curve, the random generators
  (torch CPU and CUDA, Python's ``random``), and the state of the data source, the sampler and
  the step loss (replay buffers, rollouts, coins).

Resuming loads the latest complete checkpoint, replays the data loader to the same position (the
batches are collated but not trained on: the shuffling generator then stands where it stood) and
restores the generators last, so every later draw is the one the uninterrupted run made. A phase
that had finished is not retrained: its final checkpoint is loaded and the loop ends at once,
leaving the generators as they were after that phase. Everything is written into a hidden staging
folder that is renamed into place when complete, so a SIGKILL during a save loses nothing but the
steps since the previous checkpoint; older checkpoints of the phase are then removed.

The files are read with ``torch.load(weights_only=True)`` and safetensors: tensors, numbers,
strings and containers only, never code from the data.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors.torch import load_model, save_model

STEP_PREFIX = "step-"


@runtime_checkable
class Stateful(Protocol):
    """What a data source, sampler or step loss implements to be checkpointed."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def slug(text: str) -> str:
    """``"Distilled student (forward-kl)"`` → ``"distilled-student-forward-kl"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "phase"


def random_states() -> dict[str, Any]:
    """The generators a training step may draw from: torch (CPU and every GPU) and ``random``."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(as_random_state(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def as_random_state(state: Any) -> tuple:
    """``random.setstate`` wants tuples; a round trip through the checkpoint may give lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


@dataclass
class Resumed:
    """A phase's latest checkpoint, loaded: the step it was taken at and what to restore."""

    step: int
    curve: list[float]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    parts: dict[str, Any]
    random: dict[str, Any]


@dataclass(frozen=True)
class PhaseCheckpoint:
    """The checkpoints of one training phase.

    Attributes:
        directory: The phase's folder (``<run>/checkpoints/<phase>``).
        every: Optimizer steps between checkpoints (the last step is always saved).
    """

    directory: Path
    every: int

    def due(self, step: int, total: int) -> bool:
        return step == total or step % self.every == 0

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or ``None``."""
        if not self.directory.is_dir():
            return None
        done = [p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)]
        return max(done, key=lambda p: int(p.name[len(STEP_PREFIX) :]), default=None)

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        curve: list[float],
        parts: dict[str, Stateful],
        accelerator: Any = None,
    ) -> None:
        """Save the state after ``step`` optimizer steps (every process must call it).

        ``model`` is the unwrapped student; ``parts`` the stateful data source, sampler, loss.
        """
        rank = 0 if accelerator is None else accelerator.process_index
        main = accelerator is None or accelerator.is_main_process
        staging = self.directory / f".{STEP_PREFIX}{step:06d}"
        if main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        _barrier(accelerator)
        process_state = {
            "curve": list(curve),
            "random": random_states(),
            "parts": {name: part.state_dict() for name, part in parts.items()},
        }
        torch.save(process_state, staging / f"process-{rank}.pt")
        _barrier(accelerator)
        if main:
            save_model(model, str(staging / "model.safetensors"))
            processes = 1 if accelerator is None else accelerator.num_processes
            shared = {
                "step": step,
                "processes": processes,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            }
            torch.save(shared, staging / "optimizer.pt")
            final = self.directory / f"{STEP_PREFIX}{step:06d}"
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)  # complete: only now does it count as a checkpoint
            for older in self.directory.iterdir():
                if older != final and older.name.startswith(STEP_PREFIX):
                    shutil.rmtree(older, ignore_errors=True)
        _barrier(accelerator)

    def load(self, model: torch.nn.Module, accelerator: Any = None) -> Resumed | None:
        """Load the latest checkpoint's weights into ``model`` (before it is wrapped for distributed
        training) and return the rest, or ``None`` when the phase has no checkpoint yet.

        Raises:
            ValueError: The checkpoint was written by a different number of processes.
        """
        latest = self.latest()
        if latest is None:
            return None
        shared = torch.load(latest / "optimizer.pt", weights_only=True)
        processes = 1 if accelerator is None else accelerator.num_processes
        if shared["processes"] != processes:
            raise ValueError(
                f"{latest} was written by {shared['processes']} processes: resume with the same number "
                f"(got {processes}), or start a new run"
            )
        rank = 0 if accelerator is None else accelerator.process_index
        own = torch.load(latest / f"process-{rank}.pt", weights_only=True)
        device = next(model.parameters()).device
        load_model(model, str(latest / "model.safetensors"), device=str(device))
        return Resumed(
            step=shared["step"],
            curve=list(own["curve"]),
            optimizer=shared["optimizer"],
            scheduler=shared["scheduler"],
            parts=own["parts"],
            random=own["random"],
        )


@dataclass
class RunCheckpoints:
    """The checkpoint folders of one run, handed out in the order its phases train.

    Attributes:
        root: ``<run dir>/checkpoints``.
        every: Optimizer steps between checkpoints of a phase.
    """

    root: Path
    every: int = 100
    _seen: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"checkpoint_every must be ≥ 1, got {self.every}")

    def phase(self, description: str) -> PhaseCheckpoint:
        """The folder of the next phase described so (the n-th repeat gets ``-n``)."""
        name = slug(description)
        count = self._seen[name] = self._seen.get(name, 0) + 1
        return PhaseCheckpoint(self.root / (name if count == 1 else f"{name}-{count}"), self.every)


def _barrier(accelerator: Any) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()
