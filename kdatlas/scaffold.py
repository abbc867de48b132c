"""``kdatlas new``: scaffold a new entry from templates, then say what is left to fill in.

For ``kdatlas new method my-method --branch white-box/logits --title "My method"`` it writes

- ``taxonomy/white-box/logits/my-method.yaml`` — the entry, with ``FILL IN`` placeholders;
- a BibTeX stub appended to ``bib/kd.bib`` (key = the entry id);
- for methods and objectives, ``reference_impls/my_method.py`` (a registered recipe whose loss
  raises ``NotImplementedError``) and ``tests/test_my_method.py``.

Every placeholder is a ``FILL IN`` marker that `kdatlas validate` reports with its file and line,
so a half-filled entry cannot land. Nothing is overwritten: if any target exists, nothing is
written. Templates live in ``kdatlas/templates/new/`` (``string.Template`` syntax).
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from kdatlas.bib import ARXIV_ID, BIB_DIR, PLACEHOLDER
from kdatlas.model import KEBAB_ID, Kind
from kdatlas.taxonomy import TAXONOMY_DIR, load_taxonomy
from reference_impls.registry import module_for_branch

TEMPLATES = Path(__file__).parent / "templates" / "new"
BIB_FILE = "kd.bib"
IMPLEMENTED_KINDS = (Kind.method, Kind.objective)


class ScaffoldError(ValueError):
    """The request cannot be scaffolded (bad id, unknown branch, existing files...)."""


@dataclass
class Scaffold:
    """What `new_entry` wrote."""

    entry_file: Path
    bib_file: Path
    bib_key: str
    implementation: Path | None
    test: Path | None

    @property
    def written(self) -> list[Path]:
        return [p for p in (self.entry_file, self.bib_file, self.implementation, self.test) if p]


def module_name(entry_id: str) -> str:
    """Python module name for an entry id: ``my-method`` → ``my_method``."""
    name = entry_id.replace("-", "_")
    return name if name[0].isalpha() else f"method_{name}"


def _render(template: str, **values: str) -> str:
    return string.Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values)


def _bib_title(title: str) -> str:
    # Braces around capitalised words keep BibTeX styles from lower-casing acronyms.
    return re.sub(r"\b([A-Z][A-Za-z0-9]*[A-Z][A-Za-z0-9]*)\b", r"{\1}", title)


def _check_request(root: Path, kind: Kind, entry_id: str, branch: str, title: str, arxiv: str | None) -> None:
    if not re.fullmatch(KEBAB_ID, entry_id) or len(entry_id) > 64:
        raise ScaffoldError(
            f"'{entry_id}' is not a valid id — use lower-case kebab-case (letters, digits, single "
            "hyphens), at most 64 characters, e.g. 'my-method'"
        )
    if not title.strip():
        raise ScaffoldError("the title is empty — pass --title 'Short method name'")
    if PLACEHOLDER in title:
        raise ScaffoldError(f"the title contains '{PLACEHOLDER}' — give the method's real name")
    if arxiv is not None and not ARXIV_ID.fullmatch(arxiv):
        raise ScaffoldError(f"'{arxiv}' is not an arXiv id — give the bare id, e.g. 2306.08543")
    taxonomy, _ = load_taxonomy(root)
    if branch not in taxonomy.branches:
        close = difflib.get_close_matches(branch, list(taxonomy.branches), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ScaffoldError(
            f"unknown branch '{branch}'.{hint} Branches: {', '.join(sorted(taxonomy.branches))}"
        )
    taken = set(taxonomy.entries) | set(taxonomy.branches) | taxonomy.unparsed
    taken |= {old for e in taxonomy.entries.values() for old in e.former_ids}
    if entry_id in taken:
        raise ScaffoldError(f"the id '{entry_id}' is already used — choose another id (ids are never reused)")
    if kind is Kind.survey:
        raise ScaffoldError("surveys are added by hand under taxonomy/surveys/ — see docs/extend.md")


def _make_packages(root: Path, folder: Path, branch: str) -> None:
    """Create ``folder`` and the ``__init__.py`` of every new package on the way down from ``root``
    (a new branch's first method creates its package)."""
    parts = folder.relative_to(root).parts
    for depth in range(1, len(parts) + 1):
        package = root.joinpath(*parts[:depth])
        package.mkdir(exist_ok=True)
        init = package / "__init__.py"
        if not init.exists():
            init.write_text(f'"""Implementations and tests of the taxonomy branch {branch} (kdatlas new)."""\n')


def new_entry(
    root: Path,
    kind: Kind,
    entry_id: str,
    branch: str,
    title: str,
    arxiv: str | None = None,
    year: int | None = None,
    implementation: bool = True,
) -> Scaffold:
    """Write the scaffold for a new entry; raises `ScaffoldError` (writing nothing) on bad input."""
    _check_request(root, kind, entry_id, branch, title, arxiv)
    year = year or date.today().year
    implemented = implementation and kind in IMPLEMENTED_KINDS
    module = module_name(entry_id)
    function = module
    entry_file = root / TAXONOMY_DIR / branch / f"{entry_id}.yaml"
    bib_file = root / BIB_DIR / BIB_FILE
    # The folders mirror the taxonomy: white-box/logits → reference_impls/white_box/logits/, and its
    # test in tests/white_box/logits/.
    package = module_for_branch(branch)
    package_dir = Path(*package.split("."))
    impl_file = root / package_dir / f"{module}.py" if implemented else None
    test_file = root / "tests" / Path(*package_dir.parts[1:]) / f"test_{module}.py" if implemented else None
    existing = [p for p in (entry_file, impl_file, test_file) if p is not None and p.exists()]
    if existing:
        raise ScaffoldError(
            f"{', '.join(str(p.relative_to(root)) for p in existing)} already exist(s) — nothing was written"
        )
    if not bib_file.is_file():
        raise ScaffoldError(f"{bib_file.relative_to(root)} not found — run from a kdatlas repository")
    bib_text = bib_file.read_text(encoding="utf-8")
    if re.search(r"@\w+\{\s*" + re.escape(entry_id) + r"\s*,", bib_text):
        raise ScaffoldError(f"bib/{BIB_FILE} already has the key '{entry_id}' — nothing was written")

    if implemented:
        status_block = f"implementation:\n  module: {package}.{module}\n  api: [{package}.{module}.{function}_loss]\n"
        status, access = "implemented", "logits"
    elif kind in IMPLEMENTED_KINDS:
        status_block = "status_reason: FILL IN what the project still needs to implement it.\n"
        status, access = "planned", "logits"
    else:
        status_block, status, access = "", "not-applicable", "not-applicable"
    depth = branch.count("/") + 1
    entry_text = _render(
        "entry.yaml.tmpl",
        schema="../" * depth + "schema/entry.schema.json",
        id=entry_id,
        kind=kind.value,
        title=title.strip(),
        branch=branch,
        bibkey=entry_id,
        year=str(year),
        teacher_access=access,
        status=status,
        status_block=status_block,
    )
    if arxiv:
        identifier = (
            f"  eprint        = {{{arxiv}}},\n  archivePrefix = {{arXiv}},\n"
            f"  url           = {{https://arxiv.org/abs/{arxiv}}}\n"
        )
    else:
        identifier = "  eprint        = {FILL IN the arXiv id, or replace with doi = {...}},\n  archivePrefix = {arXiv}\n"
    bib_entry = _render(
        "bibentry.bib.tmpl",
        id=entry_id,
        bibkey=entry_id,
        bibtitle=_bib_title(title.strip()),
        year=str(year),
        identifier=identifier,
    )
    values = {
        "id": entry_id,
        "title": title.strip(),
        "branch": branch,
        "module": module,
        "package": package,
        "function": function,
        "bibkey": entry_id,
    }
    files: list[tuple[Path, str]] = [(entry_file, entry_text)]
    if implemented:
        files.append((impl_file, _render("implementation.py.tmpl", **values)))
        files.append((test_file, _render("test_implementation.py.tmpl", **values)))
    for path, text in files:
        _make_packages(root, path.parent, branch)
        path.write_text(text, encoding="utf-8")
    with bib_file.open("a", encoding="utf-8") as handle:
        handle.write(("" if bib_text.endswith("\n") else "\n") + bib_entry)
    return Scaffold(entry_file, bib_file, entry_id, impl_file, test_file)
