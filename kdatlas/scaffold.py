"""``kdatlas new``: scaffold a new entry from templates, then say what is left to fill in.

For ``kdatlas new method my-method --branch white-box/logits --title "My method"`` it writes

- ``taxonomy/white-box/logits/my-method.yaml`` — the entry, with ``FILL IN`` placeholders;
- a BibTeX stub appended to ``bib/kd.bib`` (key = the entry id);
- for methods and objectives, ``reference_impls/white_box/logits/my_method.py`` (a registered
  recipe whose core raises ``NotImplementedError``) and its test,
  ``tests/white_box/logits/test_my_method.py``.

The module is one of four skeletons, one per way a recipe is made (``--shape``, see `SHAPES`):
``logits``, ``step`` and ``feature`` on white-box branches, ``pipeline`` on black-box ones; a
shape that does not fit the branch is refused with the ones that do.

Every placeholder is a ``FILL IN`` marker that `kdatlas validate` reports with its file and line,
so a half-filled entry cannot land. Nothing is overwritten: if any target exists, nothing is
written. Templates live in ``kdatlas/templates/new/`` (``string.Template`` syntax): one
``<shape>.py.tmpl`` and ``test_<shape>.py.tmpl`` per shape.
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
LINE_LENGTH = 110  # the linter's (pyproject.toml, [tool.ruff])


class ScaffoldError(ValueError):
    """The request cannot be scaffolded (bad id, unknown branch, existing files...)."""


@dataclass(frozen=True)
class Hyperparameter:
    """A keyword argument of a skeleton's recipe builder, as the entry's YAML states it."""

    name: str
    default: str  # written the same in the YAML and in the builder's signature
    description: str


@dataclass(frozen=True)
class Shape:
    """One skeleton of a method module: one way its recipe is made (docs/extend.md has the table).

    Attributes:
        name: The ``--shape`` value; the templates are ``<name>.py.tmpl`` and ``test_<name>.py.tmpl``.
        side: The top-level branch whose methods it fits (``white-box`` or ``black-box``).
        what: What the module is, for messages.
        teacher_access: The entry's ``teacher_access``.
        api: The object the entry lists under ``implementation.api`` (``{function}`` filled in).
        hyperparameters: The builder's keyword arguments, in the template's order.
    """

    name: str
    side: str
    what: str
    teacher_access: str
    api: str
    hyperparameters: tuple[Hyperparameter, ...]


_TEMPERATURE = Hyperparameter(
    "temperature", "1.0", "Softmax temperature applied to both teacher and student logits."
)
SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape(
            name="logits",
            side="white-box",
            what="an objective on the aligned logits the training loop hands it",
            teacher_access="logits",
            api="{function}_loss",
            hyperparameters=(_TEMPERATURE,),
        ),
        Shape(
            name="step",
            side="white-box",
            what="a StepLoss computed from both models and the whole batch",
            teacher_access="logits",
            api="{function}_recipe",
            hyperparameters=(_TEMPERATURE,),
        ),
        Shape(
            name="feature",
            side="white-box",
            what="a StepLoss on hidden states, student layers mapped to teacher layers through a projector",
            teacher_access="hidden-states",
            api="{function}_recipe",
            hyperparameters=(
                Hyperparameter("hint_weight", "1.0", "Weight of the feature term against the cross-entropy."),
            ),
        ),
        Shape(
            name="pipeline",
            side="black-box",
            what="a TextPipeline that asks the teacher for text and keeps the answers that pass its filters",
            teacher_access="text",
            api="{function}_recipe",
            hyperparameters=(
                Hyperparameter("num_prompts", "200", "Prompts sent to the teacher (scaled to the budget)."),
                Hyperparameter("temperature", "0.0", "Sampling temperature of the teacher (0 is greedy)."),
            ),
        ),
    )
}
# What the student gets from the teacher on each side of the taxonomy: why a shape fits or not.
SIDES = {
    "white-box": "the student reads the teacher model (its logits or hidden states)",
    "black-box": "the student sees only the teacher's text",
}


@dataclass
class Scaffold:
    """What `new_entry` wrote."""

    entry_file: Path
    bib_file: Path
    bib_key: str
    implementation: Path | None
    test: Path | None
    shape: Shape | None = None

    @property
    def written(self) -> list[Path]:
        return [p for p in (self.entry_file, self.bib_file, self.implementation, self.test) if p]


def module_name(entry_id: str) -> str:
    """Python module name for an entry id: ``my-method`` → ``my_method``."""
    name = entry_id.replace("-", "_")
    return name if name[0].isalpha() else f"method_{name}"


def _render(template: str, **values: str) -> str:
    return string.Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values)


def _sorted_import(source: str, module: str) -> str:
    """``source`` with its ``from <module> import ...`` line sorted and wrapped as isort (ruff's
    I001) wants it. The names a template imports include ones made from the entry id, so their
    order depends on the id: a fixed order in the template would fail the linter for some ids."""
    pattern = re.compile(rf"^from {re.escape(module)} import (.+)$", re.M)
    found = pattern.search(source)
    if found is None:
        return source

    def kind(name: str) -> int:  # isort's order by type: CONSTANTS, Classes, functions
        return 0 if name.isupper() else 1 if name[0].isupper() else 2

    names = sorted((n.strip() for n in found.group(1).split(",")), key=lambda n: (kind(n), n.lower()))
    line = f"from {module} import {', '.join(names)}"
    if len(line) > LINE_LENGTH:
        line = "\n".join([f"from {module} import (", *(f"    {n}," for n in names), ")"])
    return source[: found.start()] + line + source[found.end() :]


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


def shapes_for(branch: str) -> list[Shape]:
    """The shapes that fit a branch: those of its side of the taxonomy (none outside the two)."""
    side = branch.split("/")[0]
    return [shape for shape in SHAPES.values() if shape.side == side]


def choose_shape(branch: str, requested: str | None) -> Shape:
    """The shape to scaffold on ``branch``: ``requested``, or the first that fits (``logits`` on a
    white-box branch, ``pipeline`` on a black-box one); a `ScaffoldError` that says which shapes
    fit, and why, when it does not."""
    if requested is not None and requested not in SHAPES:
        raise ScaffoldError(f"unknown shape '{requested}' — choose one of {', '.join(SHAPES)}")
    fitting = shapes_for(branch)
    if not fitting:
        sides = "; ".join(f"{side}/ ({_names(shapes_for(side))})" for side in SIDES)
        raise ScaffoldError(
            f"no implementation fits the branch '{branch}': methods are implemented on {sides}. "
            "Pass --no-implementation to document it only, or put it on one of those branches"
        )
    if requested is None:
        return fitting[0]
    shape = SHAPES[requested]
    if shape not in fitting:
        side = branch.split("/")[0]
        raise ScaffoldError(
            f"the shape '{shape.name}' does not fit the branch '{branch}': on a {side} branch "
            f"{SIDES[side]}, so use --shape {_names(fitting, 'or')}. '{shape.name}' is {shape.what}, "
            f"for {shape.side} branches, where {SIDES[shape.side]}"
        )
    return shape


def _names(shapes: list[Shape], last: str = "and") -> str:
    names = [shape.name for shape in shapes]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def _hyperparameters_yaml(shape: Shape) -> str:
    lines = ["hyperparameters:"]
    for hyper in shape.hyperparameters:
        lines += [
            f"  - name: {hyper.name}",
            f"    default: {hyper.default}",
            f"    description: {hyper.description}",
            "    source: FILL IN where the paper states the default (section, table or the official "
            "repository file)",
        ]
    return "\n".join(lines) + "\n"


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
    shape: str | None = None,
) -> Scaffold:
    """Write the scaffold for a new entry; raises `ScaffoldError` (writing nothing) on bad input.

    ``shape`` picks the module's skeleton (a key of `SHAPES`; default: the first that fits the
    branch). It applies only when code is written (a method or objective, with ``implementation``).
    """
    _check_request(root, kind, entry_id, branch, title, arxiv)
    year = year or date.today().year
    implemented = implementation and kind in IMPLEMENTED_KINDS
    if shape is not None and not implemented:
        raise ScaffoldError(
            "--shape picks the skeleton of the implementation: it applies to methods and objectives "
            "scaffolded with their code (without --no-implementation)"
        )
    chosen = choose_shape(branch, shape) if implemented else None
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

    # A planned method gets the fields of the shape its branch would use (a black-box one: text).
    described = chosen or (shapes_for(branch) or [SHAPES["logits"]])[0]
    if chosen is not None:
        api = f"{package}.{module}.{chosen.api.format(function=function)}"
        status_block = f"implementation:\n  module: {package}.{module}\n  api: [{api}]\n"
        status, access = "implemented", chosen.teacher_access
    elif kind in IMPLEMENTED_KINDS:
        status_block = "status_reason: FILL IN what the project still needs to implement it.\n"
        status, access = "planned", described.teacher_access
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
        hyperparameters=_hyperparameters_yaml(described),
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
        "classname": "".join(part.capitalize() for part in module.split("_")),
        "bibkey": entry_id,
    }
    files: list[tuple[Path, str]] = [(entry_file, entry_text)]
    if chosen is not None:
        files.append((impl_file, _render(f"{chosen.name}.py.tmpl", **values)))
        test_text = _render(f"test_{chosen.name}.py.tmpl", **values)
        files.append((test_file, _sorted_import(test_text, f"{package}.{module}")))
    for path, text in files:
        _make_packages(root, path.parent, branch)
        path.write_text(text, encoding="utf-8")
    with bib_file.open("a", encoding="utf-8") as handle:
        handle.write(("" if bib_text.endswith("\n") else "\n") + bib_entry)
    return Scaffold(entry_file, bib_file, entry_id, impl_file, test_file, chosen)
