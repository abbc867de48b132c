"""Page generation: pure renderers on small in-memory data, the math extension, the mind map, and
a strict MkDocs build of the real repository (``slow``)."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as etree
from pathlib import Path
from typing import Any

import bibtexparser
import markdown
import pytest
from jinja2 import UndefinedError

from kdatlas.bib import Bibliography
from kdatlas.citation import load_citation
from kdatlas.model import Branch, Entry, Vocabulary
from kdatlas.site.entry import render_entry, render_redirect, render_relations
from kdatlas.site.generate import build_nav, generate_pages, write_pages
from kdatlas.site.indexes import render_branch, render_home
from kdatlas.site.links import Site, branch_page, cell, entry_page, mirror_test_path, page_url, relative_link
from kdatlas.site.mdmath import MathError, latex_to_mathml
from kdatlas.site.mindmap import render_mindmap
from kdatlas.site.snippets import call_arguments
from kdatlas.taxonomy import Taxonomy, load_taxonomy

REPO = Path(__file__).resolve().parents[2]
QUIET_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}

BIBTEX = """
@misc{hinton2015distilling,
  title = {Distilling the Knowledge in a Neural Network},
  author = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  year = {2015}, eprint = {1503.02531}, archivePrefix = {arXiv}
}
@inproceedings{gu2024minillm,
  title = {{MiniLLM}: Knowledge Distillation of Large Language Models},
  author = {Gu, Yuxian and Dong, Li and Wei, Furu and Huang, Minlie},
  booktitle = {ICLR}, year = {2024}, url = {https://openreview.net/forum?id=5h0qf7IBZZ}
}
"""


def make_entry(**overrides: Any) -> Entry:
    data: dict[str, Any] = {
        "id": "forward-kl",
        "kind": "objective",
        "name": "Forward KL",
        "branch": "white-box/logits",
        "summary": "Match the teacher's next-token distribution.",
        "key_idea": "Mean-seeking.",
        "equations": [
            {"label": "Token-level KL", "latex": r"\mathrm{KL}(p\,\|\,q)", "where": "p is the teacher."}
        ],
        "algorithm": ["Run both models.", "Sum over the vocabulary."],
        "hyperparameters": [
            {
                "name": "temperature",
                "default": 1.0,
                "description": "Softmax | temperature.",
                "source": "Hinton §2",
            }
        ],
        "preconditions": ["Same vocabulary."],
        "pitfalls": ["Mask the prompt."],
        "papers": ["hinton2015distilling"],
        "year": 2015,
        "venue": "NIPS workshop",
        "teacher_access": "logits",
        "status": "implemented",
        "implementation": {
            "module": "reference_impls.white_box.logits.word_level",
            "api": ["reference_impls.losses.forward_kl"],
        },
        "tags": ["divergence"],
        "relations": [{"type": "compared-with", "target": "minillm"}],
        "survey": {"placement": "in-survey", "section": "§3.1"},
    }
    data.update(overrides)
    return Entry.model_validate(data)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """Two branches, an implemented and a planned entry, two references; the repository is tmp_path."""
    taxonomy = Taxonomy(root=tmp_path)
    for branch in (
        Branch(id="white-box", name="White-box KD", description="Teacher internals.", order=1),
        Branch(
            id="white-box/logits",
            name="Logits-based",
            description="Match distributions.",
            survey_section="§3.1",
        ),
    ):
        taxonomy.branches[branch.id] = branch
        taxonomy.files[branch.id] = tmp_path / "taxonomy" / branch.id / "_branch.yaml"
    planned = make_entry(
        id="minillm",
        name="MiniLLM",
        kind="method",
        year=2024,
        papers=["gu2024minillm"],
        status="planned",
        status_reason="Needs on-policy sampling.",
        implementation=None,
        relations=[
            {"type": "extends", "target": "forward-kl"},
            {"type": "compared-with", "target": "forward-kl"},
        ],
        tags=["on-policy"],
    )
    for entry in (make_entry(), planned):
        taxonomy.entries[entry.id] = entry
        taxonomy.files[entry.id] = tmp_path / "taxonomy" / entry.branch / f"{entry.id}.yaml"
    taxonomy.vocabulary = Vocabulary(tags={"divergence": "A divergence.", "on-policy": "Student samples."})
    library = bibtexparser.parse_string(BIBTEX)
    bibliography = Bibliography(entries={e.key: e for e in library.entries})
    return Site(taxonomy, bibliography)


# --- links --------------------------------------------------------------------------------------


def test_paths_and_links() -> None:
    assert entry_page("forward-kl") == "entries/forward-kl.md"
    assert branch_page("white-box/logits") == "taxonomy/white-box/logits/index.md"
    assert relative_link("entries/a.md", "taxonomy/white-box/index.md") == "../taxonomy/white-box/index.md"
    assert relative_link("index.md", "entries/a.md") == "entries/a.md"
    assert page_url("entries/a.md") == "entries/a/"
    assert page_url("taxonomy/white-box/index.md") == "taxonomy/white-box/"
    assert page_url("index.md") == ""
    assert cell("a | b\nc") == r"a \| b c"


# --- entry page ------------------------------------------------------------------------------------


def test_entry_page_has_every_section(site: Site) -> None:
    page = render_entry(site.taxonomy.entries["forward-kl"], site)
    front = page.split("---", 2)[1]
    assert "tags:\n  - divergence" in front
    assert "| **Id** | `forward-kl` |" in page
    assert (
        "[White-box KD](../taxonomy/white-box/index.md) / [Logits-based](../taxonomy/white-box/logits/index.md)"
        in page
    )
    assert "$$\n\\mathrm{KL}(p\\,\\|\\,q)\n$$" in page
    assert "*where* p is the teacher." in page
    assert "1. Run both models.\n2. Sum over the vocabulary." in page
    assert r"Softmax \| temperature." in page  # a pipe inside a table cell is escaped
    assert (
        '=== "CPU"' in page and "kdatlas run forward-kl\n" in page and "about a minute on 2 CPU cores" in page
    )
    assert "kdatlas run forward-kl --device cuda --teacher PATH --student PATH" in page
    assert "accelerate launch -m kdatlas run forward-kl --teacher PATH --student PATH" in page
    assert "::: reference_impls.losses.forward_kl" in page
    assert "loss = forward_kl(" in page and "temperature=1.0" in page
    assert '!!! warning "Preconditions"' in page and '!!! danger "Pitfalls"' in page
    assert '???+ quote "BibTeX"' in page and "```bibtex" in page and "@misc{hinton2015distilling" in page
    assert "Hinton, G., Vinyals, O., & Dean, J. (2015)" in page
    assert "](../kd.bib)" in page and "](../bibliography.md)" in page
    assert "(../bibliography.md#hinton2015distilling)" in page
    assert "https://github.com/kdatlas/kdatlas/edit/main/taxonomy/white-box/logits/forward-kl.yaml" in page


def test_black_box_entry_offers_the_pipeline_not_a_loss(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in recipe module, so the test does not depend on where the real pipelines live.
    (tmp_path / "kd_fake_alpaca.py").write_text(
        "def alpaca_recipe(num_instructions: int = 600) -> None: ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = make_entry(
        id="alpaca",
        kind="method",
        name="Alpaca",
        teacher_access="text",
        hyperparameters=[],
        implementation={"module": "kd_fake_alpaca", "api": ["kd_fake_alpaca.alpaca_recipe"]},
    )
    site.taxonomy.files[entry.id] = site.root / "taxonomy" / entry.branch / "alpaca.yaml"
    page = render_entry(entry, site)
    assert "kdatlas run alpaca\n" in page
    assert "kdatlas run alpaca --teacher-url http://127.0.0.1:8765/v1" in page
    assert "--api-key-env OPENAI_API_KEY" in page
    assert "## Use the pipeline in your own code" in page
    assert "recipe = alpaca_recipe()" in page and "run_recipe(recipe, config)" in page
    # nothing of the white-box route: no loss to call, no shared tokenizer, no Accelerate launch
    assert "loss.backward()" not in page and "Use the loss" not in page
    assert "share the tokenizer" not in page and "accelerate launch" not in page


def test_planned_entry_says_what_is_missing_and_offers_no_commands(site: Site) -> None:
    page = render_entry(site.taxonomy.entries["minillm"], site)
    assert "planned — Needs on-policy sampling." in page
    assert '!!! info "Not runnable yet"' in page
    assert "kdatlas run" not in page and ":::" not in page


def test_relations_show_both_directions_once(site: Site) -> None:
    table = render_relations(site.taxonomy.entries["forward-kl"], site)
    assert "| extended by | [MiniLLM](minillm.md) |" in table
    assert table.count("| compared with | [MiniLLM](minillm.md) |") == 1  # declared on both sides, shown once
    dangling = make_entry(relations=[{"type": "uses", "target": "not-there"}])
    assert "`not-there` (not in the knowledge base yet)" in render_relations(dangling, site)


def test_branch_page_lists_sub_branches_and_entries(site: Site) -> None:
    page = render_branch(site.taxonomy.branches["white-box"], site)
    assert "[Logits-based](logits/index.md) (2 entries)" in page
    assert "[Forward KL](../../entries/forward-kl.md)" in page and "| Logits-based |" in page
    logits = render_branch(site.taxonomy.branches["white-box/logits"], site)
    assert "**Survey section:** §3.1" in logits and "**Part of:** [White-box KD](../index.md)" in logits


def test_nav_follows_the_tree(site: Site) -> None:
    assert build_nav(site.taxonomy) == [
        "taxonomy/index.md",
        {
            "White-box KD": [
                "taxonomy/white-box/index.md",
                {
                    "Logits-based": [
                        "taxonomy/white-box/logits/index.md",
                        {"Forward KL": "entries/forward-kl.md"},
                        {"MiniLLM": "entries/minillm.md"},
                    ]
                },
            ]
        },
    ]


def test_snippet_arguments_come_from_the_signature_and_the_yaml(site: Site) -> None:
    entry = site.taxonomy.entries["forward-kl"]
    found = site.api_object("reference_impls.losses.forward_kl")
    assert callable(found)
    inputs = {"student_logits": "s", "teacher_logits": "t", "labels": "y"}
    arguments = call_arguments(entry, inspect.signature(found), inputs)
    assert [a.text for a in arguments] == ["s", "t", "y", "temperature=1.0"]
    assert arguments[-1].comment == "Hinton §2"  # each keyword names where its default comes from

    def keyword_only(teacher: object, *, layers: int, temperature: float = 2.0) -> None: ...

    texts = [a.text for a in call_arguments(entry, inspect.signature(keyword_only), {})]
    assert texts == ["teacher", "layers=layers", "temperature=1.0"]
    assert site.api_object("reference_impls.nowhere.f") is None
    assert "reference_impls.nowhere.f" in site.api_errors


def test_entry_links_its_test_file_once_it_mirrors_the_source(site: Site) -> None:
    assert mirror_test_path("reference_impls.white_box.logits.gkd") == "tests/white_box/logits/test_gkd.py"
    entry = site.taxonomy.entries["forward-kl"]
    assert entry.implementation is not None
    expected = mirror_test_path(entry.implementation.module)
    assert expected == "tests/white_box/logits/test_word_level.py"
    test_file = site.root / expected
    if test_file.exists():
        test_file.unlink()
    assert "**Tests**" not in render_entry(entry, site)
    test_file.parent.mkdir(parents=True, exist_ok=True)
    test_file.write_text("", encoding="utf-8")
    page = render_entry(entry, site)
    assert f"| **Tests** | [`{expected}`](https://github.com/kdatlas/kdatlas/blob/main/{expected}) |" in page


def test_home_template_markers_are_filled(site: Site) -> None:
    citation = load_citation(REPO)
    home = render_home(site, citation, "# Home\n\n{{ mindmap }}\n\n{{ coverage }}\n\n{{ cite_kb }}\n")
    assert "<!-- kdatlas:" not in home
    assert "@software{kdatlas_0_1_0," in home
    assert 'href="entries/forward-kl/"' in home and 'href="taxonomy/white-box/logits/"' in home
    assert "| **All** | **2** | **1** | **1** |" in home
    assert "<!-- kdatlas:" not in render_home(site, citation)  # the real template
    with pytest.raises(UndefinedError):  # a variable the template names but nobody fills fails
        render_home(site, citation, "{{ mind_map }}")


# --- mind map --------------------------------------------------------------------------------------


def _svg(html: str) -> etree.Element:
    match = re.search(r"<svg.*</svg>", html, re.S)
    assert match is not None
    return etree.fromstring(match.group(0))


def test_mindmap_is_wellformed_svg_with_one_link_per_entry(site: Site) -> None:
    html = render_mindmap(site.taxonomy, lambda e: f"entries/{e}/", lambda b: f"taxonomy/{b}/")
    assert "\n\n" not in html  # a blank line would end the raw HTML block in Markdown
    svg = _svg(html)
    ns = "{http://www.w3.org/2000/svg}"
    entries = [a for a in svg.iter(f"{ns}a") if "kd-mm-entry" in a.get("class", "")]
    assert sorted(a.get("data-entry") for a in entries) == ["forward-kl", "minillm"]
    classes = {a.get("data-entry"): a.get("class") for a in entries}
    assert "kd-mm-impl" in classes["forward-kl"] and "kd-mm-planned" in classes["minillm"]
    assert {a.get("href") for a in entries} == {"entries/forward-kl/", "entries/minillm/"}


def test_mindmap_stays_compact_with_a_hundred_entries(site: Site) -> None:
    taxonomy = site.taxonomy
    for i in range(100):
        branch = ("white-box", "white-box/logits")[i % 2]
        entry = make_entry(
            id=f"method-{i}", name=f"Method number {i} with a long descriptive name", branch=branch
        )
        taxonomy.entries[entry.id] = entry
    svg = _svg(render_mindmap(taxonomy, lambda e: e, lambda b: b))
    width, height = (float(v) for v in svg.get("viewBox", "").split()[2:])
    assert len([a for a in svg.iter() if a.get("data-entry")]) == 102
    assert height < 1000 and width < 1400, (width, height)
    assert all(len(t.text or "") <= 40 for t in svg.iter("{http://www.w3.org/2000/svg}text"))


# --- math ------------------------------------------------------------------------------------------


def _md(text: str) -> str:
    return markdown.markdown(text, extensions=["kdatlas.site.mdmath", "pymdownx.superfences"])


def test_math_inline_and_display_become_mathml() -> None:
    html = _md("Inline $\\frac{1}{T}$ here.\n\n$$\n\\sum_v p_v \\log \\frac{p_v}{q_v}\n$$\n")
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">' in html
    assert '<div class="kd-math"><math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in html
    assert "$" not in html


def test_math_leaves_code_prices_and_escapes_alone() -> None:
    html = _md("It costs $5 or $6. Escaped \\$x\\$. Code `$a$`.\n\n```python\nx = '$b$'\n```\n")
    assert "<math" not in html
    assert "costs $5 or $6" in html and "Escaped $x$" in html
    assert "<code>$a$</code>" in html and "$b$" in html


def test_math_errors_name_the_expression() -> None:
    with pytest.raises(MathError, match=r"\\frac\{1\}\{"):
        latex_to_mathml("\\frac{1}{")
    with pytest.raises(MathError, match=r"unknown command\(s\) \\notacommand"):
        _md("Bad $\\notacommand{x}$.")
    assert "arg" in latex_to_mathml("\\arg\\min_\\theta f")  # \arg is rewritten, not rejected


# --- generation on the real data -------------------------------------------------------------------


def test_generation_covers_every_entry_and_branch(tmp_path: Path) -> None:
    generated = write_pages(REPO, tmp_path)
    taxonomy, _ = load_taxonomy(REPO)
    for entry_id in taxonomy.entries:
        assert (tmp_path / entry_page(entry_id)).is_file(), entry_id
    for branch_id in taxonomy.branches:
        assert (tmp_path / branch_page(branch_id)).is_file(), branch_id
    for name in ("index.md", "taxonomy/index.md", "bibliography.md", "tags.md", "kd.bib"):
        assert (tmp_path / name).is_file(), name
    assert len(generated.pages) >= len(taxonomy.entries) + len(taxonomy.branches) + 5


def test_edit_paths_point_at_the_yaml() -> None:
    edits: dict[str, str] = {}
    generate_pages(REPO, lambda path, text: None, edits.__setitem__)
    assert edits["entries/forward-kl.md"] == "../taxonomy/white-box/logits/forward-kl.yaml"
    assert edits["taxonomy/white-box/index.md"] == "../taxonomy/white-box/_branch.yaml"
    assert edits["index.md"] == "../kdatlas/site/templates/home.md.j2"


@pytest.mark.slow
def test_strict_build(tmp_path: Path) -> None:
    """`mkdocs build --strict` of the repository: clean, within budget, a page for every entry."""
    site = tmp_path / "site"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env=QUIET_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 60, f"strict build took {elapsed:.1f} s (budget 60 s)"
    taxonomy, _ = load_taxonomy(REPO)
    for entry_id in taxonomy.entries:
        assert (site / "entries" / entry_id / "index.html").is_file(), entry_id
    forward = (site / "entries" / "forward-kl" / "index.html").read_text(encoding="utf-8")
    assert "edit/main/taxonomy/white-box/logits/forward-kl.yaml" in forward
    assert "<math" in forward and "<summary>BibTeX</summary>" in forward
    home = (site / "index.html").read_text(encoding="utf-8")
    assert home.count('class="kd-mm-entry') == len(taxonomy.entries)
    assert (site / "kd.bib").read_text(encoding="utf-8").count("@") >= len(
        {k for e in taxonomy.entries.values() for k in e.papers}
    )
    assert (
        "https://fonts.googleapis.com" not in home and "cdn.jsdelivr" not in home and "unpkg.com" not in home
    )


def test_renamed_entry_leaves_a_redirect(site: Site) -> None:
    stub = render_redirect("word-kl", site.taxonomy.entries["forward-kl"])
    assert '<meta http-equiv="refresh" content="0; url=../forward-kl/">' in stub
    assert "[Forward KL](forward-kl.md)" in stub and "exclude: true" in stub


def test_included_benchmark_files_exist() -> None:
    """Hand-written pages include measured tables with pymdownx.snippets, paths from the repo root."""
    included = []
    for page in (REPO / "docs").glob("*.md"):
        text = page.read_text(encoding="utf-8")
        assert "kdatlas:include" not in text, page  # the former home-made include marker
        included += re.findall(r'^--8<-- "([^"]+)"$', text, re.M)
    assert included, "no page includes a benchmark table"
    for path in included:
        assert path.startswith("benchmarks/") and (REPO / path).is_file(), path
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    assert "base_path: [!relative $config_dir]" in config and "check_paths: true" in config


def test_templates_ship_as_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    settings = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = settings["tool"]["setuptools"]["package-data"]["kdatlas.site"]
    package = REPO / "kdatlas" / "site"
    templates = sorted(p.relative_to(package) for p in (package / "templates").rglob("*.j2"))
    assert templates
    for template in templates:
        assert any(template.match(pattern) for pattern in patterns), template
