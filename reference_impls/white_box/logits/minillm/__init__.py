r"""MiniLLM (Gu, Dong, Wei & Huang, ICLR 2024): reverse-KL policy gradient for generative students.

MiniLLM minimises the *sequence-level* reverse KL $\mathrm{KL}(q_\theta \| p)$ of the student $q_\theta$
from the teacher $p$. Its gradient is a policy gradient on student samples with the per-token
reward $r_t = \log p(y_t \mid y_{<t}, x) - \log q_\theta(y_t \mid y_{<t}, x)$. The paper makes
it trainable with four tricks, all here as pure functions on response-aligned tensors:

1. **Teacher-mixed sampling.** Responses are drawn token by token from
   $\tilde p = (1-\alpha)\,q + \alpha\,p$ ($\alpha = 0.2$) and corrected with the per-token
   importance weight $w_t = q(y_t) / \tilde p(y_t)$ (`importance_weights`).
2. **Length-normalised long-horizon return** of the rewards (`token_rewards`,
   `normalized_returns`), whitened into an advantage (`whiten_advantages`).
3. **PPO clipping** of the importance-weighted ratio (`ppo_clipped_pg_loss`).
4. **Single-step decomposition.** The expectation over the current token is taken exactly:
   $\mathrm{KL}(q_t \| p_t)$ over the full vocabulary at every sampled prefix (`single_step_loss`).

A language-modelling term on pre-training data keeps general ability (`pretrain_loss`), and
`minillm_loss` adds everything up as the official trainer does.

## Faithful to the authors' code (microsoft/LMOps `minillm/`), where it differs from the paper

- **The return at $t$ includes $r_t$.** The paper's decomposition pairs the exact single-step KL at
  $t$ with the *future* return $R_{t+1}$, normalised by $T-t-1$. The code's
  `Loss._get_advantages_and_returns` (`minillm/losses.py`) accumulates
  $\sum_{i \ge t} \gamma^{i-t} r_i$ *from $t$* and divides by the number of valid tokens from $t$ on,
  and the single-step term is added on top (`--single-step-reg`). `include_current=False` gives the
  paper's $R_{t+1}$ form.
- **Discount $\gamma = 0.95$** (`--gamma` default, `minillm/arguments.py`), not in the paper; the
  length normaliser counts tokens without discount.
- **Whitening** (`whiten` in `minillm/minillm/utils.py`) is over every entry of the padded
  `[batch, response]` tensor of the current PPO minibatch, padding zeros included, with the
  unbiased variance (`torch.var_mean`) and $\epsilon = 10^{-8}$.
- **The importance weight multiplies the ratio *before* clipping** (`_pg_loss`):
  $\rho_t = \frac{q_\theta(y_t)}{q_\mathrm{old}(y_t)} \cdot \frac{q_\mathrm{old}(y_t)}{\tilde p(y_t)}$.
  The single-step term carries no weight (`_reg_loss`).
- **Rewards** (`PPOSampler.run_sample`, `minillm/sampler.py`) use the student log-probs at sampling
  time, are divided by `--reward-scaling` (0.5) and clipped to $\pm$`--cliprange-reward` (100);
  they stay fixed for the `--ppo-epochs` (4) passes over the rollouts.

BibTeX: ``gu2024minillm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from reference_impls.core.data_sources import OnlineSource
from reference_impls.core.recipe import Recipe
from reference_impls.core.training import StepLoss, aligned_logits
from reference_impls.losses import IGNORE_INDEX
from reference_impls.losses.numerics import check_unit_interval
from reference_impls.registry import register
from reference_impls.white_box.logits.minillm.objective import (
    MiniLLMLoss,
    ReturnNormalization,
    importance_weights,
    minillm_loss,
    normalized_returns,
    ppo_clipped_pg_loss,
    pretrain_loss,
    single_step_loss,
    token_rewards,
    whiten_advantages,
)

__all__ = [
    "MiniLLMLoss",
    "MiniLLMRollouts",
    "MiniLLMStep",
    "ReturnNormalization",
    "importance_weights",
    "minillm_loss",
    "minillm_recipe",
    "normalized_returns",
    "ppo_clipped_pg_loss",
    "pretrain_loss",
    "single_step_loss",
    "token_rewards",
    "whiten_advantages",
]


# --- the recipe: rollouts, the training step, registration ---------------------------------------


@dataclass
class MiniLLMRollouts(OnlineSource):
    """MiniLLM's data: teacher-mixed student rollouts, each reused for ``ppo_epochs`` steps.

    Every ``ppo_epochs`` steps the batch's prompts are continued by sampling from
    $(1-\\alpha)\\,q + \\alpha\\,p$ (`reference_impls.core.sampling`); the same rollouts are
    then trained on for ``ppo_epochs`` consecutive optimizer steps, as the official trainer's PPO
    epochs do. The dataset batch of the step rides along (``lm_*`` keys) for the
    language-modelling term. ``state`` carries what the first pass over a rollout stores for the
    next ones (the log-probs at sampling time).

    Attributes:
        teacher_mix: α of teacher-mixed sampling.
        ppo_epochs: Optimizer steps per rollout.
        temperature: Sampling temperature (top-k 0, top-p 1).

    Their defaults and sources are `minillm_recipe`'s.
    """

    teacher_mix: float
    ppo_epochs: int
    temperature: float
    name: str = "teacher-mixed-rollouts"
    _rollout: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_unit_interval("teacher_mix (α)", self.teacher_mix)
        if self.ppo_epochs < 1 or self.temperature <= 0:
            raise ValueError("ppo_epochs must be ≥ 1 and temperature > 0")

    def batch_for_step(
        self, step: int, total_steps: int, fixed: dict[str, Tensor], sampler: Any
    ) -> tuple[dict[str, Any], str]:
        """A fresh rollout every ``ppo_epochs`` steps, else the current one again."""
        origin = "reused-rollout"
        if self._rollout is None or step % self.ppo_epochs == 0:
            self._rollout = {**sampler.from_student(fixed), "state": {}}
            origin = "student"
        lm = {f"lm_{key}": value for key, value in fixed.items()}
        return {**self._rollout, **lm}, origin

    def state_dict(self) -> dict[str, Any]:
        """The current rollout too: a resumed run reuses it for the rest of its PPO epochs."""
        return {**super().state_dict(), "rollout": self._rollout}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._rollout = state["rollout"]

    def describe(self) -> dict[str, str]:
        """Name, α, PPO epochs, temperature."""
        return {
            "name": self.name,
            "teacher_mix": str(self.teacher_mix),
            "ppo_epochs": str(self.ppo_epochs),
            "temperature": str(self.temperature),
        }


def _responses(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Left-align each row's response: ``(logits [B, R, V], ids [B, R], mask [B, R])``.

    The official trainer left-pads prompts, so responses share columns and the whitening runs over
    a ``[batch, response]`` tensor; here prompts are right-padded, so gather the response span.
    """
    mask = labels != IGNORE_INDEX
    lengths = mask.sum(-1)
    starts = torch.where(lengths > 0, mask.float().argmax(-1), torch.zeros_like(lengths))
    width = max(int(lengths.max()), 1)
    offsets = torch.arange(width, device=labels.device)
    index = (starts.unsqueeze(-1) + offsets).clamp(max=labels.shape[1] - 1)
    valid = offsets < lengths.unsqueeze(-1)
    gathered = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    ids = torch.where(valid, labels.gather(1, index), torch.zeros_like(index))
    return gathered, ids, valid


@dataclass(frozen=True)
class MiniLLMStep(StepLoss):
    """One MiniLLM optimizer step (a `StepLoss`): PG + single-step KL + LM term, via `minillm_loss`.

    The fields are `minillm_recipe`'s hyper-parameters (their defaults and sources are written
    there once)."""

    teacher_mix: float
    gamma: float
    reward_scaling: float
    reward_clip: float
    clip_range: float
    lm_coef: float
    kd_ratio: float
    temperature: float

    def __call__(
        self, model: torch.nn.Module, teacher: Any, batch: dict[str, Any], vocab_size: int | None
    ) -> Tensor:
        if teacher is None:
            raise ValueError("MiniLLM needs the teacher's logits (white-box access)")
        student_logits, labels = aligned_logits(model, batch, vocab_size=vocab_size)
        with torch.no_grad():
            teacher_logits, _ = aligned_logits(teacher, batch, vocab_size=vocab_size)
            lm_teacher_logits, _ = aligned_logits(teacher, batch, "lm_", vocab_size)
        lm_logits, lm_labels = aligned_logits(model, batch, "lm_", vocab_size)
        student_r, ids, mask = _responses(student_logits, labels)
        teacher_r, _, _ = _responses(teacher_logits, labels)
        state = batch["state"]
        if "old_logprobs" not in state:
            # The first pass over a rollout: the student has not changed since sampling, so its
            # current log-probs are the sampling-time ones (the models have no dropout).
            logprobs = torch.log_softmax(student_r.detach().float() / self.temperature, dim=-1)
            state["old_logprobs"] = logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
        return minillm_loss(
            student_r,
            teacher_r,
            ids,
            mask,
            state["old_logprobs"],
            lm_student_logits=lm_logits,
            lm_labels=lm_labels,
            lm_teacher_logits=lm_teacher_logits,
            teacher_mix_alpha=self.teacher_mix,
            gamma=self.gamma,
            reward_scaling=self.reward_scaling,
            reward_clip=self.reward_clip,
            clip_range=self.clip_range,
            lm_coef=self.lm_coef,
            kd_ratio=self.kd_ratio,
            temperature=self.temperature,
        ).total


@register("minillm")
def minillm_recipe(
    teacher_mix: float = 0.2,
    ppo_epochs: int = 4,
    gamma: float = 0.95,
    reward_scaling: float = 0.5,
    reward_clip: float = 100.0,
    clip_range: float = 0.2,
    lm_coef: float = 1.0,
    kd_ratio: float = 0.5,
    temperature: float = 1.0,
) -> Recipe:
    """MiniLLM: reverse-KL policy gradient on teacher-mixed student rollouts (LMOps defaults).

    Args:
        teacher_mix: α of teacher-mixed sampling (``--teacher-mixed-alpha 0.2``).
        ppo_epochs: Optimizer steps per rollout (``--ppo-epochs 4``).
        gamma: Discount of the long-horizon return (``--gamma`` default 0.95).
        reward_scaling: Reward divisor (``--reward-scaling 0.5``).
        reward_clip: Reward bound (``--cliprange-reward 100`` in the scripts).
        clip_range: PPO ε (``--cliprange`` default 0.2).
        lm_coef: Weight of the language-modelling term (``--lm-coef`` default 1).
        kd_ratio: κ inside the LM term: (1 − κ)·CE + κ·FKL (``--kd-ratio 0.5``).
        temperature: Sampling and loss temperature (``--temperature 1``).
    """
    step = MiniLLMStep(
        teacher_mix, gamma, reward_scaling, reward_clip, clip_range, lm_coef, kd_ratio, temperature
    )
    return Recipe(
        method_id="minillm",
        data=MiniLLMRollouts(teacher_mix=teacher_mix, ppo_epochs=ppo_epochs, temperature=temperature),
        loss=step,
    )
