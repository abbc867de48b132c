r"""Patient KD (Sun, Cheng, Gan & Liu, EMNLP-IJCNLP 2019): learn from the teacher's intermediate layers too.

Vanilla KD teaches only from the last layer's output; Patient KD also pulls the student's
intermediate [CLS] states towards those of chosen teacher layers ("patient": it learns from
several layers, not only the last):

$$\mathcal{L} = (1-\alpha)\,\mathrm{CE}(y, z_s) + \alpha\,T^2\,\mathrm{KL}\big(\sigma(z_t/T)\,\|\,\sigma(z_s/T)\big)
 + \beta \sum_{j} \Big\| \frac{h_s^{j}}{\|h_s^{j}\|} - \frac{h_t^{I(j)}}{\|h_t^{I(j)}\|} \Big\|_2^2$$

Algorithm:

1. Freeze the fine-tuned teacher. Choose the teacher layers ``I(j)`` for the student's layers
   ``1..M-1`` (the last is left to the output term): **PKD-Skip** takes every ``N/M``-th layer,
   **PKD-Last** the last ones below the top (`reference_impls.white_box.features.layer_map`).
2. For each batch: the teacher's logits and hidden states (no gradient), the student's.
3. Hard and soft terms as in vanilla KD (`reference_impls.losses.vanilla_kd_loss`).
4. Patient term: the squared distance between the *normalised* [CLS] states of each pair —
   `reference_impls.losses.normalized_distance`, which is ``2 − 2 cos``.
5. Minimise the sum.

The paper writes the patient term as a sum of squared norms over the chosen layers; the authors'
code (``src/KD_loss.py``, ``patience_loss``) takes the mean squared error over the stacked
normalised states — over layers, sequences *and* the width — so its β is about ``width`` times
the paper's for the same loss. Both are offered (``patience="code"``, the default, whose β the
defaults below come from; ``patience="paper"``). The defaults α = 0.7, T = 10, β = 500 are the
code's predefined PKD run (``src/argument_parser.py``, ``get_predefine_argv``), picked from its
grid T ∈ {5, 10, 20}, α ∈ {0.2, 0.5, 0.7}, β ∈ {10, 100, 500, 1000}
(``scripts/run_student_patience.py``); the soft term is scaled by T² there too.

Departure: the paper's students are as wide as the teacher (BERT-6 of BERT-12, both 768); the
embedded student is half as wide, so its states pass a learned linear projection first
(TinyBERT's ``fit_dense``), trained with it and dropped before it is saved. A student of the
teacher's width (``--student``) gets the identity. BibTeX: ``sun2019pkd``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reference_impls.core.encoders import LabelledTexts
from reference_impls.core.recipe import Recipe
from reference_impls.losses import normalized_distance, vanilla_kd_loss
from reference_impls.losses.numerics import check_in_range, check_unit_interval
from reference_impls.registry import register
from reference_impls.white_box.features import (
    FeatureLoss,
    forward_with_features,
    layer_map,
    matched_states,
    projector,
)

CLS = 0  # the [CLS] position: the embedded texts start with it (reference_impls.core.encoders)


@dataclass
class PatientLoss(FeatureLoss):
    """PKD's step: vanilla KD on the class logits plus the patient [CLS] distance."""

    alpha: float
    temperature: float
    beta: float
    strategy: str
    patience: str

    def prepare(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        self.mapping = layer_map(
            teacher.config.num_hidden_layers, student.config.num_hidden_layers, self.strategy
        )
        self.attach(student, {"cls": projector(student.config.hidden_size, teacher.config.hidden_size)})

    def __call__(
        self, student: torch.nn.Module, teacher: Any, batch: dict[str, Tensor], vocab_size: Any
    ) -> Tensor:
        if teacher is None or self.projectors is None:
            raise ValueError("Patient KD needs the teacher model and prepare() before training")
        s = forward_with_features(student, batch)
        with torch.no_grad():
            t = forward_with_features(teacher, batch)
        kd = vanilla_kd_loss(
            s.logits, t.logits, batch["label"], temperature=self.temperature, alpha=self.alpha
        )
        distances = [
            normalized_distance(self.projectors["cls"](s_state[:, CLS]), t_state[:, CLS])
            for _, s_state, t_state in matched_states(s.hidden_states, t.hidden_states, self.mapping)
        ]
        if not distances:  # a one-layer student has no intermediate layer to be patient with
            return kd
        if self.patience == "paper":
            return kd + self.beta * sum(distances)
        # The code's MSE: the mean over layers and over the width of the squared differences.
        return kd + self.beta * sum(distances) / (len(distances) * t.hidden_states[-1].shape[-1])


@register("pkd")
def pkd_recipe(
    strategy: str = "skip",
    alpha: float = 0.7,
    temperature: float = 10.0,
    beta: float = 500.0,
    patience: str = "code",
) -> Recipe:
    """Patient KD on the classification suite.

    Args:
        strategy: ``skip`` (PKD-Skip, the paper's better variant) or ``last`` (PKD-Last).
        alpha: Weight of the soft term; 1 − α on the hard cross-entropy (code's predefined run: 0.7).
        temperature: Softening temperature T of the soft term, scaled by T² (code: 10).
        beta: Weight of the patient term (code: 500 with its mean-squared form); 0 leaves vanilla
            KD, the paper's baseline.
        patience: ``code`` (mean over layers and width, the authors' code) or ``paper`` (sum of
            squared norms over layers, the paper's equation).
    """
    if strategy not in ("skip", "last"):
        raise ValueError(f"strategy must be 'skip' (PKD-Skip) or 'last' (PKD-Last), got {strategy!r}")
    if patience not in ("code", "paper"):
        raise ValueError(
            f"patience must be 'code' (the authors' MSE) or 'paper' (the equation), got {patience!r}"
        )
    check_unit_interval("alpha", alpha)
    check_in_range("temperature", temperature, 0.0, float("inf"), open_low=True)
    check_in_range("beta", beta, 0.0, float("inf"))
    return Recipe(
        method_id="pkd",
        data=LabelledTexts(),
        loss=PatientLoss(alpha, temperature, beta, strategy, patience),
        evaluation="classification",
    )
