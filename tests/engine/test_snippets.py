"""Every code block an entry page shows compiles, and the ones that can run on toy inputs run.

The snippets are rendered from the YAML hyper-parameters and the API's signatures, so a wrong
keyword or a renamed function shows up here rather than in a reader's traceback. Loss snippets
run on tiny random models; recipe snippets build the recipe (nothing is trained).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from kdatlas.model import Entry, Status
from kdatlas.site.entry import render_entry
from kdatlas.site.generate import load_site
from kdatlas.site.links import Site
from kdatlas.site.snippets import page_snippets, recipe_snippet

REPO = Path(__file__).resolve().parents[2]
VOCAB, BATCH, SEQ = 11, 2, 7
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)\n```$", re.S | re.M)


@pytest.fixture(scope="module")
def site() -> Site:
    loaded, _ = load_site(REPO)
    return loaded


def _implemented(site: Site) -> list[Entry]:
    return [e for e in site.taxonomy.ordered_entries() if e.status is Status.implemented]


class TinyLM(torch.nn.Module):
    """A stand-in causal LM: next-token logits straight from an embedding table."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.table = torch.nn.Embedding(VOCAB, VOCAB)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table(input_ids) * attention_mask[..., None])


def _trainer_namespace() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator)
    labels = input_ids.clone()
    labels[:, :3] = -100  # the prompt
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {"student": TinyLM(1), "teacher": TinyLM(2), "batch": batch}


def test_every_python_block_on_an_entry_page_compiles(site: Site) -> None:
    compiled = 0
    for entry in site.taxonomy.ordered_entries():
        page = render_entry(entry, site)
        for index, block in enumerate(PYTHON_BLOCK.findall(page)):
            compile(block, f"<{entry.id} block {index}>", "exec")
            compiled += 1
        for snippet in page_snippets(entry, site):
            assert snippet.code in page, (entry.id, snippet.api)  # what is tested is what is shown
    assert compiled >= len(_implemented(site))


def test_every_implemented_entry_offers_code(site: Site) -> None:
    for entry in _implemented(site):
        assert page_snippets(entry, site), entry.id
    assert not site.api_errors


def test_loss_snippets_run_on_tiny_models(site: Site) -> None:
    ran = 0
    for entry in _implemented(site):
        for snippet in page_snippets(entry, site):
            if snippet.kind != "loss" or not snippet.api.startswith("reference_impls.losses."):
                continue
            namespace = _trainer_namespace()
            exec(compile(snippet.code, f"<{entry.id}: {snippet.api}>", "exec"), namespace)
            loss = namespace["loss"]
            assert loss.ndim == 0 and torch.isfinite(loss), (entry.id, snippet.api)
            grad = namespace["student"].table.weight.grad
            assert grad is not None and grad.abs().sum() > 0, (entry.id, snippet.api)
            ran += 1
    assert ran >= 8  # the eight divergences and Hinton's loss, at least


def test_recipe_snippets_build_their_recipe(site: Site) -> None:
    built = 0
    for entry in _implemented(site):
        snippet = recipe_snippet(entry, site)
        if snippet is None:
            continue
        namespace: dict[str, Any] = {}
        exec(compile(snippet.code, f"<{entry.id} recipe>", "exec"), namespace)
        assert namespace["recipe"] is not None, entry.id
        built += 1
    assert built >= 10
