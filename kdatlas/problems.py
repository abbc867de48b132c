"""One reported problem: where it is, what is wrong, how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class Problem:
    """A validation finding, printed as ``file:line: what is wrong — how to fix it``."""

    path: Path
    line: int
    message: str
    fix: str

    def format(self, root: Path | None = None) -> str:
        """Render the problem, with the path relative to ``root`` when possible."""
        shown = self.path
        if root is not None:
            try:
                shown = self.path.resolve().relative_to(root.resolve())
            except ValueError:
                shown = self.path
        return f"{shown}:{self.line}: {self.message} — {self.fix}"

    def as_dict(self, root: Path | None = None) -> dict[str, object]:
        """JSON-friendly form (for ``kdatlas validate --json``)."""
        text = self.format(root)
        return {"file": text.split(":", 1)[0], "line": self.line, "problem": self.message, "fix": self.fix}
