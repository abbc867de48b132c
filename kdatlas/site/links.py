"""Where pages live and how they link: docs paths, relative links, repository URLs, the site context."""

from __future__ import annotations

import importlib
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from kdatlas.bib import Bibliography, strip_braces
from kdatlas.export import BIB_NAME
from kdatlas.model import Branch, Entry, RelationType
from kdatlas.taxonomy import Taxonomy

REPO_URL = "https://github.com/kdatlas/kdatlas"
REPO_BRANCH = "main"
BIB_DOWNLOAD = BIB_NAME
BIBLIOGRAPHY_PAGE = "bibliography.md"
TAXONOMY_PAGE = "taxonomy/index.md"
TAGS_PAGE = "tags.md"
STATISTICS_PAGE = "statistics.md"
CATALOGUE_PAGE = "catalogue.md"


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


def one_line(text: object) -> str:
    """Collapse whitespace (YAML folded text) to single spaces."""
    return re.sub(r"\s+", " ", str(text)).strip()


def cell(text: object) -> str:
    """A value made safe for one Markdown table cell."""
    return one_line(text).replace("|", r"\|")


def yaml_quote(text: str) -> str:
    """A string as a double-quoted YAML scalar (for front matter)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def module_file(module: str) -> str:
    """Repository path of a dotted module: ``a.b`` → ``a/b.py`` (``a/b/__init__.py`` for a package)."""
    return module.replace(".", "/") + ".py"


def mirror_test_path(module: str) -> str:
    """Where the tests of a method module live: the tests mirror the source tree.

    ``reference_impls.white_box.logits.gkd`` → ``tests/white_box/logits/test_gkd.py``.
    """
    parts = module.split(".")[1:]  # the tree below the top-level package
    return posixpath.join("tests", *parts[:-1], f"test_{parts[-1]}.py") if parts else ""


@dataclass
class Site:
    """Everything a page needs: the data, the repository links and the reverse relations."""

    taxonomy: Taxonomy
    bibliography: Bibliography
    repo_url: str = REPO_URL
    repo_branch: str = REPO_BRANCH
    # Imported API objects and the import errors met, by dotted path (each import happens once).
    api_objects: dict[str, object] = field(default_factory=dict)
    api_errors: dict[str, str] = field(default_factory=dict)
    # The committed leaderboard (benchmarks/results/leaderboard.json), if there is one.
    board: dict[str, object] | None = None
    # The same board with the GPT-2-style student (benchmarks/results/leaderboard_gpt2.json).
    family_board: dict[str, object] | None = None
    # The classic methods over five seeds (benchmarks/results/leaderboard_headline.json).
    headline_board: dict[str, object] | None = None
    # The claims (benchmarks/claims.yaml) and their committed results, if there are any.
    claims: list[object] = field(default_factory=list)
    claim_results: dict[str, object] | None = None
    # The conventions (tests/conventions.yaml) and the tests that guard them, by convention id.
    conventions: list[dict[str, object]] = field(default_factory=list)
    guards: dict[str, list[object]] = field(default_factory=dict)
    # Peer parity cases by id (benchmarks/results/peer_parity.json), if committed.
    parity: dict[str, dict[str, object]] = field(default_factory=dict)

    def short_citation(self, key: str) -> str:
        """``[Surname et al., year](link)`` for a bibliography key (the key itself if unknown)."""
        if key not in self.bibliography.entries:
            return key
        authors = [a.strip() for a in strip_braces(self.bibliography.field(key, "author")).split(" and ")]
        surnames = [a.split(",")[0].strip() for a in authors]
        who = surnames[0] if len(surnames) == 1 else " and ".join(surnames) if len(surnames) == 2 else f"{surnames[0]} et al."
        text = f"{who}, {self.bibliography.field(key, 'year')}"
        link = self.bibliography.link(key)
        return f"[{text}]({link})" if link else text

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

    def has_file(self, repo_path: str) -> bool:
        """Whether the repository holds this file (links to missing files are not shown)."""
        return bool(repo_path) and (self.root / repo_path).is_file()

    def edit_url(self, repo_path: str) -> str:
        """GitHub edit link for a repository file."""
        return f"{self.repo_url}/edit/{self.repo_branch}/{repo_path}"

    def blob_url(self, repo_path: str) -> str:
        """GitHub view link for a repository file."""
        return f"{self.repo_url}/blob/{self.repo_branch}/{repo_path}"

    def code_file(self, module: str) -> str:
        """Repository path of an implementation module, whether it is a file or a package."""
        path = module_file(module)
        package = path.removesuffix(".py") + "/__init__.py"
        return package if not self.has_file(path) and self.has_file(package) else path

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

    def api_object(self, dotted: str) -> object | None:
        """The object an ``implementation.api`` path names, imported; None (and an error kept) if it fails.

        Usage snippets take required arguments from the imported object's signature, so the
        site reads the API the way a user's code does; the documented source is mkdocstrings'.
        """
        if dotted in self.api_objects:
            return self.api_objects[dotted]
        if dotted in self.api_errors:
            return None
        module, _, name = dotted.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name)
        except Exception as error:  # any failure of a method module's import is a data problem here
            self.api_errors[dotted] = f"{type(error).__name__}: {error}"
            return None
        self.api_objects[dotted] = found
        return found
