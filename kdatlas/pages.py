"""Render the documentation pages from the taxonomy and the bibliography — a plain Python step.

Nothing here depends on MkDocs. `generate_pages` takes a ``write(path, text)`` callback, so
the same code runs inside mkdocs-gen-files (``docs/gen_pages.py``: virtual files) and standalone
(`write_pages`: real files, e.g. before a build with a successor generator). Every
``render_*`` function is pure: data in, Markdown out.

URL scheme (paths relative to the docs root; MkDocs serves ``x.md`` at ``x/``):

========================================  =============================================
``index.md``                              home (from ``docs/_templates/home.md``)
``entries/<id>.md``                       one page per entry — flat, so an entry keeps its
                                          URL when it moves to another branch; a renamed
                                          entry leaves ``entries/<former id>.md`` as a redirect
``taxonomy/index.md``                     the whole tree, with counts
``taxonomy/<branch path>/index.md``       one overview per branch
``bibliography.md``, ``kd.bib``           all references; the whole BibTeX file
``tags.md``                               the tag index (Material's tags plugin)
========================================  =============================================
"""

from __future__ import annotations

import ast
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdatlas.bib import Bibliography, strip_braces
from kdatlas.catalogue import render_catalogue_page, render_statistics_page
from kdatlas.citation import CITATION_FILE, CitationError, citation_bibtex, citation_text, load_citation
from kdatlas.export import BIB_NAME, release_files
from kdatlas.mdmath import MathError, latex_to_mathml
from kdatlas.mindmap import render_mindmap
from kdatlas.model import Branch, Entry, Placement, RelationType, Status, TeacherAccess
from kdatlas.problems import Problem
from kdatlas.stats import compute_stats
from kdatlas.taxonomy import Taxonomy
from kdatlas.validate import validate_repository

REPO_URL = "https://github.com/kdatlas/kdatlas"
REPO_BRANCH = "main"
HOME_TEMPLATE = Path("docs") / "_templates" / "home.md"
BIB_DOWNLOAD = BIB_NAME
BIBLIOGRAPHY_PAGE = "bibliography.md"
TAXONOMY_PAGE = "taxonomy/index.md"
TAGS_PAGE = "tags.md"
STATISTICS_PAGE = "statistics.md"
CATALOGUE_PAGE = "catalogue.md"
CPU_RUNTIME = "about a minute on 2 CPU cores"
MINDMAP_MARKER = "<!-- kdatlas:mindmap -->"
STATS_MARKER = "<!-- kdatlas:stats -->"
SURVEY_CITE_MARKER = "<!-- kdatlas:cite-survey -->"
KB_CITE_MARKER = "<!-- kdatlas:cite-kb -->"
SURVEY_KEY = "yang2024kdsurvey"

Writer = Callable[[str, str], None]
EditPathSetter = Callable[[str, str], None]

TEACHER_ACCESS_LABEL = {
    TeacherAccess.logits: "logits (white-box)",
    TeacherAccess.hidden_states: "hidden states (white-box)",
    TeacherAccess.text: "generated text only (black-box)",
    TeacherAccess.not_applicable: "not applicable",
}
STATUS_LABEL = {
    Status.implemented: ":material-check-circle:&nbsp;implemented",
    Status.planned: ":material-progress-clock:&nbsp;planned",
    Status.not_applicable: "nothing to run",
}
PLACEMENT_LABEL = {
    Placement.in_survey: "in the survey",
    Placement.beyond_survey: "beyond the survey",
    Placement.survey_itself: "the survey itself",
}
OUTGOING_LABEL = {
    RelationType.extends: "extends",
    RelationType.uses: "uses",
    RelationType.compared_with: "compared with",
    RelationType.applied_in: "applied in",
    RelationType.variant_of: "variant of",
}
# How a relation reads from its target's side ("A extends B" → on B's page: "extended by A").
INCOMING_LABEL = {
    RelationType.extends: "extended by",
    RelationType.uses: "used by",
    RelationType.compared_with: "compared with",
    RelationType.applied_in: "applies",
    RelationType.variant_of: "has variant",
}
# Call expressions for the usual loss parameters in the "use the loss in your trainer" snippet.
SNIPPET_ARGUMENTS = {
    "student_logits": "student_logits[:, :-1]",
    "teacher_logits": "teacher_logits[:, :-1]",
    "labels": 'batch["labels"][:, 1:]',
}


# --- paths and links ---------------------------------------------------------------------------


def entry_page(entry_id: str) -> str:
    """Docs path of an entry's page."""
    return f"entries/{entry_id}.md"


def branch_page(branch_id: str) -> str:
    """Docs path of a branch overview page."""
    return f"taxonomy/{branch_id}/index.md"


def relative_link(from_page: str, to_path: str) -> str:
    """Link from one docs path to another (``entries/a.md`` → ``taxonomy/x/index.md``)."""
    return posixpath.relpath(to_path, posixpath.dirname(from_page) or ".")


def page_url(doc_path: str) -> str:
    """The directory-style URL MkDocs gives a docs path (``entries/a.md`` → ``entries/a/``)."""
    if doc_path == "index.md":
        return ""
    stem = doc_path.removesuffix(".md")
    return (stem.removesuffix("index") if stem.endswith("/index") else stem + "/").lstrip("/")


def one_line(text: str) -> str:
    """Collapse whitespace (YAML folded text) to single spaces."""
    return re.sub(r"\s+", " ", text).strip()


def cell(text: object) -> str:
    """A value made safe for one Markdown table cell."""
    return re.sub(r"\s+", " ", str(text)).replace("|", r"\|").strip()


def _quote_yaml(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _indent(text: str, spaces: int = 4) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else "" for line in text.splitlines())


# --- the site context ----------------------------------------------------------------------------


@dataclass
class Site:
    """Everything a page needs: the data, the repository links and the reverse relations."""

    taxonomy: Taxonomy
    bibliography: Bibliography
    repo_url: str = REPO_URL
    repo_branch: str = REPO_BRANCH
    api_parameters: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """Repository root."""
        return self.taxonomy.root

    def source_path(self, key: str) -> str:
        """Repository-relative path of an entry's or branch's YAML file."""
        path = self.taxonomy.files[key]
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return path.as_posix()

    def edit_url(self, repo_path: str) -> str:
        """GitHub edit link for a repository file."""
        return f"{self.repo_url}/edit/{self.repo_branch}/{repo_path}"

    def blob_url(self, repo_path: str) -> str:
        """GitHub view link for a repository file."""
        return f"{self.repo_url}/blob/{self.repo_branch}/{repo_path}"

    def incoming(self, entry_id: str) -> list[tuple[RelationType, Entry, str | None]]:
        """Relations other entries declare towards ``entry_id``."""
        found = []
        for other in self.taxonomy.ordered_entries():
            for relation in other.relations:
                if relation.target == entry_id and other.id != entry_id:
                    found.append((relation.type, other, relation.note))
        return found

    def branch_trail(self, branch_id: str) -> list[Branch]:
        """The branch and its ancestors, root first (missing ones skipped)."""
        parts = branch_id.split("/")
        trail = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return [self.taxonomy.branches[b] for b in trail if b in self.taxonomy.branches]


def short_citation(bibliography: Bibliography, key: str) -> str:
    """'Hinton et al. 2015' for a BibTeX key (the key itself when it is unknown)."""
    if key not in bibliography.entries:
        return key
    authors = [a for a in re.split(r"\s+and\s+", bibliography.field(key, "author")) if a.strip()]
    first = strip_braces(authors[0]) if authors else "Anonymous"
    last = first.split(",")[0].strip() if "," in first else first.split()[-1]
    suffix = "" if len(authors) == 1 else (f" & {_last_name(authors[1])}" if len(authors) == 2 else " et al.")
    return f"{last}{suffix} {bibliography.field(key, 'year')}".strip()


def _last_name(author: str) -> str:
    name = strip_braces(author)
    return name.split(",")[0].strip() if "," in name else name.split()[-1]


# --- API signatures (static, no import of torch) ------------------------------------------------------


def read_api_parameters(root: Path, dotted: str) -> list[tuple[str, str | None]] | None:
    """Parameters of a module-level function as ``(name, default source or None)``, read with ``ast``.

    Returns None when the module file or the function is not found (e.g. a class or re-export).
    """
    module, _, name = dotted.rpartition(".")
    path = root / (module.replace(".", "/") + ".py")
    if not path.is_file():
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(
                args.defaults
            )
            found = [
                (a.arg, ast.unparse(d) if d is not None else None)
                for a, d in zip(positional, defaults, strict=True)
            ]
            found += [
                (a.arg, ast.unparse(d) if d is not None else None)
                for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
            ]
            return found
    return None


# --- entry page -------------------------------------------------------------------------------------


def render_metadata_card(entry: Entry, site: Site) -> str:
    """The metadata card: id, kind, branch, year, venue, teacher access, status, survey, papers."""
    page = entry_page(entry.id)
    trail = (
        " / ".join(
            f"[{b.name}]({relative_link(page, branch_page(b.id))})" for b in site.branch_trail(entry.branch)
        )
        or f"`{entry.branch}`"
    )
    status = STATUS_LABEL[entry.status]
    if entry.status is Status.planned and entry.status_reason:
        status += f" — {entry.status_reason}"
    survey = PLACEMENT_LABEL[entry.survey.placement]
    if entry.survey.section:
        survey += f", {entry.survey.section}"
    papers = []
    for key in entry.papers:
        label = short_citation(site.bibliography, key)
        link = site.bibliography.link(key) if key in site.bibliography.entries else None
        shown = f"[{label}]({link})" if link else label
        papers.append(f"{shown} ([ref]({relative_link(page, BIBLIOGRAPHY_PAGE)}#{key}))")
    rows = [
        ("Id", f"`{entry.id}`"),
        ("Kind", entry.kind.value),
        ("Branch", trail),
        ("Year", str(entry.year)),
        ("Venue", entry.venue),
        ("Teacher access", TEACHER_ACCESS_LABEL[entry.teacher_access]),
        ("Status", status),
        ("Survey", survey),
        ("Papers", "; ".join(papers)),
    ]
    if entry.implementation is not None:
        module_path = entry.implementation.module.replace(".", "/") + ".py"
        rows.append(("Code", f"[`{module_path}`]({site.blob_url(module_path)})"))
    lines = ['<div class="kd-card" markdown>', "", "| | |", "|---|---|"]
    lines += [f"| **{name}** | {cell(value)} |" for name, value in rows]
    lines += ["", "</div>"]
    return "\n".join(lines)


def render_equations(entry: Entry) -> str:
    """Each equation as its label, display math and the 'where' text."""
    parts = []
    for equation in entry.equations:
        block = f"**{equation.label}**\n\n$$\n{equation.latex.strip()}\n$$"
        if equation.where:
            block += f"\n\n*where* {equation.where.strip()}"
        parts.append(block)
    return "\n\n".join(parts)


def render_algorithm(entry: Entry) -> str:
    """The algorithm steps as an ordered list."""
    return "\n".join(f"{i}. {one_line(step)}" for i, step in enumerate(entry.algorithm, 1))


def render_hyperparameters(entry: Entry) -> str:
    """Hyper-parameters as a table: name, default, meaning, source."""
    lines = [
        '<div class="kd-hparams" markdown>',
        "",
        "| Name | Default | Meaning | Source |",
        "|---|---|---|---|",
    ]
    for h in entry.hyperparameters:
        default = "—" if h.default is None else f"`{h.default}`"
        lines.append(f"| `{h.name}` | {default} | {cell(h.description)} | {cell(h.source)} |")
    return "\n".join([*lines, "", "</div>"])


def is_text_pipeline(entry: Entry) -> bool:
    """Whether the entry's implementation is a black-box data pipeline (the teacher's text only),
    run by `reference_impls.black_box.pipeline` rather than the white-box training harness."""
    return entry.teacher_access is TeacherAccess.text


def _render_tabs(tabs: list[tuple[str, str, str]]) -> str:
    blocks = []
    for title, command, note in tabs:
        blocks.append(f'=== "{title}"\n\n    ```bash\n    {command}\n    ```\n\n    {note}')
    return "\n\n".join(blocks)


def render_pipeline_run_tabs(entry: Entry) -> str:
    """'Run it' tabs of a black-box pipeline: embedded teacher, an HTTP endpoint, a local model."""
    access = relative_link(entry_page(entry.id), "black-box-access.md")
    return _render_tabs(
        [
            (
                "CPU",
                f"kdatlas run {entry.id}",
                f"Runs with no arguments ({CPU_RUNTIME}): the embedded instruction teacher (trained on "
                "first use, about 10 minutes, then cached) writes the data through its text "
                "interface only, every teacher call is cached (a "
                "rerun makes none), and the table compares the distilled student with the same student "
                "trained on the seed data alone and with the teacher. The run directory keeps the "
                "distilled data as `data.jsonl`.",
            ),
            (
                "HTTP teacher",
                f"kdatlas run {entry.id} --teacher-url http://127.0.0.1:8765/v1 --teacher-model NAME "
                "--api-key-env OPENAI_API_KEY",
                "Any OpenAI-compatible endpoint (OpenAI, vLLM, TGI, llama.cpp); the key is read from "
                "the named environment variable and never written to logs or the run directory. "
                "`kdatlas serve-teacher` serves the embedded teacher this way. The prompts and the "
                "exact evaluation are the embedded suite's, so the teacher must follow its plain-text "
                f"formats ([black-box teacher access]({access})).",
            ),
            (
                "Local model",
                f"kdatlas run {entry.id} --device cuda --teacher PATH --student PATH",
                "`PATH` is a local directory or a Hugging Face hub id; the teacher is still used "
                "through generated text only, so teacher and student may use different tokenizers.",
            ),
        ]
    )


def render_run_tabs(entry: Entry) -> str:
    """'Run it' content tabs (CPU / GPU / multi-GPU) for an implemented entry; otherwise what is missing."""
    if entry.status is Status.planned:
        return f'!!! info "Not runnable yet"\n\n    {entry.status_reason}'
    if entry.status is not Status.implemented:
        return f"Nothing to run: this entry is a{'n' if entry.kind.value[0] in 'aeiou' else ''} {entry.kind.value}."
    if is_text_pipeline(entry):
        return render_pipeline_run_tabs(entry)
    tabs = [
        (
            "CPU",
            f"kdatlas run {entry.id}",
            f"Runs with no arguments on the embedded toy task and tiny teacher/student models "
            f"({CPU_RUNTIME}; the teacher is trained once and cached) and prints the metrics of the "
            "baseline student, the distilled student and the teacher.",
        ),
        (
            "GPU",
            f"kdatlas run {entry.id} --device cuda --teacher PATH --student PATH",
            "`PATH` is a local directory or a Hugging Face hub id; teacher and student must share the "
            "tokenizer for white-box methods.",
        ),
        (
            "Multi-GPU",
            f"accelerate launch -m kdatlas run {entry.id} --teacher PATH --student PATH",
            "Uses your Accelerate configuration (`accelerate config`): DDP, FSDP or DeepSpeed.",
        ),
    ]
    return _render_tabs(tabs)


def render_pipeline_snippet(entry: Entry) -> str:
    """'Use the pipeline in your own code': the recipe run against a teacher endpoint, and its data."""
    if entry.implementation is None or not entry.implementation.api:
        return ""
    module, _, name = entry.implementation.api[0].rpartition(".")
    code = (
        "from reference_impls.black_box.pipeline import PipelineConfig, run_pipeline\n"
        f"from {module} import {name}\n\n"
        f"recipe = {name}()  # keyword arguments: the hyper-parameters above\n"
        'config = PipelineConfig(teacher_url="http://127.0.0.1:8765/v1", teacher_model="NAME")\n'
        "result = run_pipeline(recipe, config)\n"
        "print(result.metrics)  # seed-only baseline, distilled student, teacher\n"
        "for example in result.data:  # the distilled data (data.jsonl of a `kdatlas run`)\n"
        "    example.segments  # ((text, supervised), ...): train your own SFT loop on it"
    )
    intro = (
        "A black-box method is a data pipeline: it reaches the teacher only through generated text, "
        "filters what comes back, and fine-tunes the student on the result with the ordinary "
        "next-token loss on the supervised segments. Run it in your own code, or take the data to "
        "your own trainer."
    )
    return f"{intro}\n\n```python\n{code}\n```"


def render_loss_snippet(entry: Entry, site: Site) -> str:
    """'Use the loss in your own trainer': a call of each API function with the entry's defaults."""
    if entry.implementation is None:
        return ""
    defaults = {h.name: h.default for h in entry.hyperparameters}
    snippets = []
    for dotted in entry.implementation.api:
        module, _, name = dotted.rpartition(".")
        parameters = site.api_parameters.get(dotted)
        if parameters is None:
            parameters = read_api_parameters(site.root, dotted)
        if parameters is None:
            continue
        names = [p for p, _ in parameters]
        if not {"student_logits", "teacher_logits"} <= set(names):
            required = [p for p, d in parameters if d is None]
            call = f"loss = {name}({', '.join(required)})"
            snippets.append(f"from {module} import {name}\n\n{call}  # see the API below\nloss.backward()")
            continue
        arguments = [SNIPPET_ARGUMENTS.get(p, p) for p, d in parameters if d is None]
        if "labels" in names and "labels" not in [p for p, d in parameters if d is None]:
            arguments.append(SNIPPET_ARGUMENTS["labels"])
        arguments += [
            f"{p}={defaults[p]!r}" for p, _ in parameters if p in defaults and defaults[p] is not None
        ]
        call = ",\n    ".join(arguments)
        snippets.append(
            "import torch\n"
            f"from {module} import {name}\n\n"
            "# batch: input_ids, attention_mask and labels (-100 on prompt and padding tokens)\n"
            'inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}\n'
            "student_logits = student(**inputs).logits  # [batch, seq, vocab]\n"
            "with torch.no_grad():  # the teacher is frozen\n"
            "    teacher_logits = teacher(**inputs).logits\n"
            "# the losses never shift: logits at position i are scored against label i + 1\n"
            f"loss = {name}(\n    {call},\n)\n"
            "loss.backward()"
        )
    if not snippets:
        return ""
    intro = (
        "The loss is a pure function of the two models' outputs, so it drops into any training loop "
        "(a Hugging Face `Trainer.compute_loss`, TRL, or plain PyTorch). Conventions: "
        f"[loss conventions]({relative_link(entry_page(entry.id), 'conventions.md')})."
    )
    return intro + "\n\n" + "\n\n".join(f"```python\n{s}\n```" for s in snippets)


def render_relations(entry: Entry, site: Site) -> str:
    """Related entries, both the entry's own relations and those pointing at it."""
    page = entry_page(entry.id)

    def name_of(target: str) -> str:
        other = site.taxonomy.entries.get(target)
        if other is None:
            return f"`{target}` (not in the knowledge base yet)"
        return f"[{other.name}]({relative_link(page, entry_page(other.id))})"

    candidates = [(OUTGOING_LABEL[r.type], r.target, r.note or "") for r in entry.relations]
    candidates += [
        (INCOMING_LABEL[kind], other.id, note or "") for kind, other, note in site.incoming(entry.id)
    ]
    rows: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for label, target, note in candidates:  # "compared with" is symmetric: list each pair once
        if (label, target) not in seen:
            seen.add((label, target))
            rows.append((label, name_of(target), note))
    if not rows:
        return ""
    if not any(note for _, _, note in rows):
        lines = ["| Relation | Entry |", "|---|---|"]
        lines += [f"| {cell(kind)} | {cell(target)} |" for kind, target, _ in rows]
    else:
        lines = ["| Relation | Entry | Note |", "|---|---|---|"]
        lines += [f"| {cell(kind)} | {cell(target)} | {cell(note)} |" for kind, target, note in rows]
    return "\n".join(lines)


def render_cite(entry: Entry, site: Site) -> str:
    """The formatted references, a collapsible BibTeX block and the whole-bibliography links."""
    page = entry_page(entry.id)
    known = [k for k in entry.papers if k in site.bibliography.entries]
    lines = []
    for key in entry.papers:
        if key not in site.bibliography.entries:
            lines.append(f"- `{key}` — missing from `bib/` (run `kdatlas validate`)")
            continue
        text = site.bibliography.text(key)
        link = site.bibliography.link(key)
        lines.append(f"- {text}" + (f" [:material-open-in-new: paper]({link})" if link else ""))
    parts = ["\n".join(lines)]
    if known:
        bibtex = site.bibliography.bibtex(known).strip()
        parts.append(f'???+ quote "BibTeX"\n\n    ```bibtex\n{_indent(bibtex)}\n    ```')
    parts.append(
        f"Everything at once: [download `kd.bib`]({relative_link(page, BIB_DOWNLOAD)}) · "
        f"[all references]({relative_link(page, BIBLIOGRAPHY_PAGE)})"
    )
    return "\n\n".join(parts)


def render_entry(entry: Entry, site: Site) -> str:
    """The whole page of one entry."""
    page = entry_page(entry.id)
    yaml_path = site.source_path(entry.id)
    front = ["---", f"title: {_quote_yaml(entry.name)}", f"description: {_quote_yaml(entry.summary)}"]
    if entry.tags:
        front += ["tags:", *[f"  - {tag}" for tag in entry.tags]]
    front.append("---")

    sections: list[tuple[str, str]] = [
        ("Key idea", entry.key_idea),
        ("Equations", render_equations(entry)),
        ("Algorithm", render_algorithm(entry)),
        ("Hyper-parameters", render_hyperparameters(entry) if entry.hyperparameters else ""),
        ("Run it", render_run_tabs(entry)),
        (
            ("Use the pipeline in your own code", render_pipeline_snippet(entry))
            if is_text_pipeline(entry)
            else ("Use the loss in your own trainer", render_loss_snippet(entry, site))
        ),
    ]
    if entry.implementation is not None and entry.implementation.api:
        sections.append(("API", "\n\n".join(f"::: {dotted}" for dotted in entry.implementation.api)))
    checks = []
    if entry.preconditions:
        items = "\n".join(f"    - {one_line(p)}" for p in entry.preconditions)
        checks.append(f'!!! warning "Preconditions"\n\n{items}')
    if entry.pitfalls:
        items = "\n".join(f"    - {one_line(p)}" for p in entry.pitfalls)
        checks.append(f'!!! danger "Pitfalls"\n\n{items}')
    sections.append(("Preconditions and pitfalls", "\n\n".join(checks)))
    sections.append(("Related entries", render_relations(entry, site)))
    sections.append(("Run notes", entry.run_notes or ""))
    survey_note = entry.survey.note or ""
    for alternative in entry.survey.alternatives:
        survey_note += (
            f"\n\n- {alternative.source} files it under `{alternative.branch}`; we do not, because "
            f"{alternative.reason}"
        )
    sections.append(("Placement notes", survey_note.strip()))
    sections.append(("Cite", render_cite(entry, site)))

    body = [
        "\n".join(front),
        f"# {entry.name}",
        render_metadata_card(entry, site),
        entry.summary,
    ]
    body += [f"## {title}\n\n{content}" for title, content in sections if content.strip()]
    body.append(
        f"---\n\n:material-pencil: This page is generated from "
        f"[`{yaml_path}`]({site.edit_url(yaml_path)}); edit the YAML, not the page "
        f"([how to add or change an entry]({relative_link(page, 'extend.md')}))."
    )
    return "\n\n".join(body) + "\n"


def render_redirect(old_id: str, entry: Entry) -> str:
    """A stub page at a former id that sends the reader to the renamed entry."""
    target = relative_link(entry_page(old_id), entry_page(entry.id))
    url = f"../{entry.id}/"
    return (
        f"---\ntitle: {_quote_yaml(entry.name)}\nsearch:\n  exclude: true\n---\n\n"
        f'<meta http-equiv="refresh" content="0; url={url}">\n\n'
        f"# Moved\n\n`{old_id}` is now [{entry.name}]({target}).\n"
    )


# --- branch and overview pages ---------------------------------------------------------------------


def render_entry_table(entries: list[Entry], from_page: str, site: Site, show_branch: bool = False) -> str:
    """Entries as a table: name (linked), year, venue, teacher access, status."""
    header = ["Entry", *(["Branch"] if show_branch else []), "Year", "Venue", "Teacher access", "Status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in entries:
        row = [f"[{entry.name}]({relative_link(from_page, entry_page(entry.id))})"]
        if show_branch:
            branch = site.taxonomy.branches.get(entry.branch)
            row.append(branch.name if branch else entry.branch)
        row += [
            str(entry.year),
            entry.venue,
            TEACHER_ACCESS_LABEL[entry.teacher_access],
            STATUS_LABEL[entry.status],
        ]
        lines.append("| " + " | ".join(cell(value) for value in row) + " |")
    return "\n".join(lines)


def render_branch(branch: Branch, site: Site) -> str:
    """A branch overview: description, survey section, sub-branches and the entries below it."""
    page = branch_page(branch.id)
    taxonomy = site.taxonomy
    parts = [f"---\ntitle: {_quote_yaml(branch.name)}\n---", f"# {branch.name}", branch.description]
    facts = []
    if branch.survey_section:
        facts.append(f"**Survey section:** {branch.survey_section}")
    trail = site.branch_trail(branch.id)[:-1]
    if trail:
        up = " / ".join(f"[{b.name}]({relative_link(page, branch_page(b.id))})" for b in trail)
        facts.append(f"**Part of:** {up}")
    facts.append(
        f"[:material-pencil: edit `{site.source_path(branch.id)}`]({site.edit_url(site.source_path(branch.id))})"
    )
    parts.append(" · ".join(facts))
    children = taxonomy.children(branch.id)
    if children:
        items = []
        for child in children:
            count = len(taxonomy.entries_in(child.id, recursive=True))
            items.append(
                f"- [{child.name}]({relative_link(page, branch_page(child.id))}) "
                f"({count} entr{'y' if count == 1 else 'ies'}) — {one_line(child.description)}"
            )
        parts.append("## Sub-branches\n\n" + "\n".join(items))
    entries = taxonomy.entries_in(branch.id, recursive=True)
    if entries:
        parts.append("## Entries\n\n" + render_entry_table(entries, page, site, show_branch=bool(children)))
    else:
        parts.append("## Entries\n\nNo entries yet.")
    return "\n\n".join(parts) + "\n"


def render_stats(site: Site, from_page: str) -> str:
    """Counts per top-level branch and status, with implementation coverage."""
    taxonomy = site.taxonomy
    lines = ["| Branch | Entries | Implemented | Planned |", "|---|---|---|---|"]
    total = {Status.implemented: 0, Status.planned: 0, "all": 0}
    for branch in taxonomy.children(None):
        entries = taxonomy.entries_in(branch.id, recursive=True)
        implemented = sum(e.status is Status.implemented for e in entries)
        planned = sum(e.status is Status.planned for e in entries)
        total[Status.implemented] += implemented
        total[Status.planned] += planned
        total["all"] += len(entries)
        link = f"[{branch.name}]({relative_link(from_page, branch_page(branch.id))})"
        lines.append(f"| {link} | {len(entries)} | {implemented} | {planned} |")
    lines.append(
        f"| **All** | **{total['all']}** | **{total[Status.implemented]}** | **{total[Status.planned]}** |"
    )
    return "\n".join(lines)


def render_taxonomy_index(site: Site) -> str:
    """The overview of the whole tree: counts, then every entry by branch."""
    page = TAXONOMY_PAGE
    parts = [
        "---\ntitle: Taxonomy\n---",
        "# Taxonomy",
        "The tree follows Yang et al.'s survey (white-box, black-box, evaluation, applications, "
        "future directions) and adds newer methods, marked *beyond the survey* on their pages. "
        f"Each entry is one YAML file under `taxonomy/`; the [mind map]({relative_link(page, 'index.md')}#mind-map) "
        "on the home page draws the same tree.",
        "## Coverage\n\n" + render_stats(site, page),
        "## All entries",
    ]
    for branch in site.taxonomy.walk():
        entries = site.taxonomy.entries_in(branch.id)
        if not entries:
            continue
        title = " / ".join(b.name for b in site.branch_trail(branch.id))
        parts.append(
            f"### [{title}]({relative_link(page, branch_page(branch.id))})\n\n"
            + render_entry_table(entries, page, site)
        )
    return "\n\n".join(parts) + "\n"


def render_bibliography(site: Site) -> str:
    """Every reference, with an anchor per key and the entries that cite it."""
    page = BIBLIOGRAPHY_PAGE
    citing: dict[str, list[Entry]] = {}
    for entry in site.taxonomy.ordered_entries():
        for key in entry.papers:
            citing.setdefault(key, []).append(entry)
    bib = site.bibliography
    keys = sorted(bib.entries, key=lambda k: (short_citation(bib, k).lower(), k))
    parts = [
        "---\ntitle: Bibliography\nhide:\n  - navigation\n---",
        "# Bibliography",
        f"{len(keys)} references; how each was checked against the publisher or arXiv is recorded "
        f"in `bib/VERIFICATION.md`. Download them all as [`kd.bib`]({BIB_DOWNLOAD}) for Zotero, "
        "Overleaf or BibTeX; each entry page has its own BibTeX block.",
    ]
    for key in keys:
        link = bib.link(key)
        used = ", ".join(f"[{e.name}]({relative_link(page, entry_page(e.id))})" for e in citing.get(key, []))
        block = f'<div class="kd-ref" id="{key}" markdown>\n\n**{short_citation(bib, key)}** · `{key}`\n\n{bib.text(key)}'
        if link:
            block += f" [:material-open-in-new:]({link})"
        if used:
            block += f"\n\nCited by: {used}"
        parts.append(block + "\n\n</div>")
    return "\n\n".join(parts) + "\n"


def render_tags_page(site: Site) -> str:
    """The tag index (Material fills in the marker) with the vocabulary's meanings."""
    vocabulary = site.taxonomy.vocabulary.tags if site.taxonomy.vocabulary else {}
    used = {tag for e in site.taxonomy.entries.values() for tag in e.tags}
    rows = "\n".join(
        f"| `{tag}` | {cell(meaning)} |" for tag, meaning in sorted(vocabulary.items()) if tag in used
    )
    return (
        "---\ntitle: Tags\nhide:\n  - navigation\n---\n\n# Tags\n\n"
        "Tags come from the controlled vocabulary in `taxonomy/vocabulary.yaml`; a tag outside it "
        "fails `kdatlas validate` and the strict docs build.\n\n"
        "| Tag | Meaning |\n|---|---|\n" + rows + "\n\n## Pages by tag\n\n<!-- material/tags -->\n"
    )


def render_home(template: str, site: Site, citation: dict[str, object]) -> str:
    """The home page: the hand-written template with the generated parts filled in."""
    svg = render_mindmap(
        site.taxonomy,
        entry_href=lambda entry_id: page_url(entry_page(entry_id)),
        branch_href=lambda branch_id: page_url(branch_page(branch_id)),
    )
    survey = ""
    if SURVEY_KEY in site.bibliography.entries:
        survey = f"```bibtex\n{site.bibliography.bibtex([SURVEY_KEY]).strip()}\n```"
    return (
        template.replace(MINDMAP_MARKER, svg)
        .replace(STATS_MARKER, render_stats(site, "index.md"))
        .replace(SURVEY_CITE_MARKER, survey)
        .replace(KB_CITE_MARKER, render_kb_citation(citation))
    )


def render_kb_citation(citation: dict[str, object]) -> str:
    """'Cite this knowledge base' from CITATION.cff: the message, a text reference and BibTeX."""
    return (
        f"{one_line(str(citation['message']))}\n\n{citation_text(citation)}\n\n"
        f"```bibtex\n{citation_bibtex(citation).strip()}\n```\n\n"
        "GitHub's *Cite this repository* button and Zenodo read the same `CITATION.cff`."
    )


# --- navigation ------------------------------------------------------------------------------------


def build_nav(taxonomy: Taxonomy) -> list[object]:
    """The 'Taxonomy' nav subtree (MkDocs ``nav`` syntax): sections per branch with index pages."""

    def section(branch: Branch) -> dict[str, list[object]]:
        items: list[object] = [branch_page(branch.id)]
        items += [section(child) for child in taxonomy.children(branch.id)]
        items += [{entry.name: entry_page(entry.id)} for entry in taxonomy.entries_in(branch.id)]
        return {branch.name: items}

    return [TAXONOMY_PAGE, *[section(branch) for branch in taxonomy.children(None)]]


# --- checks and the generation step ----------------------------------------------------------------


def math_problems(taxonomy: Taxonomy) -> list[Problem]:
    """Every equation that latex2mathml cannot render, at its YAML line (earlier than the build error)."""
    problems = []
    for entry in taxonomy.entries.values():
        for index, equation in enumerate(entry.equations):
            try:
                latex_to_mathml(equation.latex, display=True)
            except MathError as error:
                problems.append(
                    Problem(
                        taxonomy.files[entry.id],
                        taxonomy.line(entry.id, "equations", index, "latex"),
                        f"equation '{equation.label}' does not render: {error.reason}",
                        "fix the LaTeX (latex2mathml supports standard math-mode commands)",
                    )
                )
    return problems


@dataclass
class Generated:
    """What `generate_pages` wrote and what it found wrong."""

    pages: list[str]
    problems: list[Problem]


def load_site(
    root: Path, repo_url: str = REPO_URL, repo_branch: str = REPO_BRANCH
) -> tuple[Site, list[Problem]]:
    """Load and cross-check the data (no implementation imports: mkdocstrings checks the API paths)."""
    report = validate_repository(root, check_implementations=False)
    problems = list(report.problems) + math_problems(report.taxonomy)
    return Site(report.taxonomy, report.bibliography, repo_url, repo_branch), problems


def generate_pages(
    root: Path,
    write: Writer,
    set_edit_path: EditPathSetter | None = None,
    repo_url: str = REPO_URL,
    repo_branch: str = REPO_BRANCH,
) -> Generated:
    """Render every generated page and call ``write(docs_path, text)`` for each.

    Args:
        root: Repository root (holds ``taxonomy/``, ``bib/`` and ``docs/``).
        write: Receives each docs-relative path and its content (Markdown, or BibTeX for ``kd.bib``).
        set_edit_path: Optional ``(docs_path, edit_path)`` callback; edit paths are relative to
            ``docs/`` (``../taxonomy/...yaml``), as MkDocs' ``edit_uri`` expects.
        repo_url: Repository URL used for in-page edit and source links.
        repo_branch: Branch used in those links.

    Returns:
        The written paths, and every data problem found (the caller decides how loud to be).
    """
    site, problems = load_site(root, repo_url, repo_branch)
    taxonomy = site.taxonomy
    written: list[str] = []

    def emit(path: str, text: str, edit: str | None = None) -> None:
        write(path, text)
        written.append(path)
        if set_edit_path is not None and edit is not None:
            set_edit_path(path, edit)

    template_path = root / HOME_TEMPLATE
    try:
        citation = load_citation(root)
    except CitationError as error:
        problems.append(Problem(root / CITATION_FILE, 1, str(error).split(": ", 1)[-1], "fix CITATION.cff"))
        citation = {
            "message": "CITATION.cff is missing or invalid.",
            "title": "kdatlas",
            "authors": [],
            "version": "?",
        }
    if template_path.is_file():
        emit(
            "index.md",
            render_home(template_path.read_text(encoding="utf-8"), site, citation),
            HOME_TEMPLATE.relative_to("docs").as_posix(),
        )
    else:
        problems.append(
            Problem(template_path, 1, "the home page template is missing", "restore docs/_templates/home.md")
        )
    for entry in taxonomy.ordered_entries():
        emit(entry_page(entry.id), render_entry(entry, site), "../" + site.source_path(entry.id))
        for old_id in entry.former_ids:
            emit(entry_page(old_id), render_redirect(old_id, entry))
    for branch in taxonomy.walk():
        emit(branch_page(branch.id), render_branch(branch, site), "../" + site.source_path(branch.id))
    emit(TAXONOMY_PAGE, render_taxonomy_index(site))
    emit(BIBLIOGRAPHY_PAGE, render_bibliography(site), "../bib/kd.bib")
    emit(TAGS_PAGE, render_tags_page(site), "../taxonomy/vocabulary.yaml")
    emit(
        STATISTICS_PAGE,
        render_statistics_page(
            compute_stats(taxonomy),
            branch_href=lambda branch_id: relative_link(STATISTICS_PAGE, branch_page(branch_id)),
            catalogue_link=relative_link(STATISTICS_PAGE, CATALOGUE_PAGE),
        ),
    )
    emit(
        CATALOGUE_PAGE,
        render_catalogue_page(
            taxonomy,
            # raw HTML links are not rewritten by MkDocs: give the final directory-style URL
            entry_href=lambda entry_id: "../" + page_url(entry_page(entry_id)),
            branch_name=lambda branch_id: " / ".join(b.name for b in site.branch_trail(branch_id)),
        ),
    )
    # The machine-readable release (`kdatlas export`), downloadable from the site; kd.bib is
    # the same file the bibliography page links to.
    for name, text in release_files(taxonomy, site.bibliography).items():
        if name != BIB_DOWNLOAD or site.bibliography.entries:
            emit(name, text)
    return Generated(written, problems)


def write_pages(root: Path, out_dir: Path) -> Generated:
    """Standalone generation: write every generated page as a real file under ``out_dir``."""

    def write(path: str, text: str) -> None:
        target = out_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    return generate_pages(root, write)
