"""The typed taxonomy model: what one YAML entry, one branch and the tag vocabulary may contain.

The YAML files under ``taxonomy/`` are the single source of truth; this module says what a valid
file looks like. The JSON Schema exported from these classes (``kdatlas schema``) lives next to
the data so that editors can complete and check entries as they are typed.

Cross-file rules (ids unique, relations resolve, BibTeX keys exist, implementations import) are
not expressible per file; they live in `kdatlas.validate`.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

KEBAB_ID = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
BRANCH_PATH = r"^[a-z0-9]+(?:-[a-z0-9]+)*(?:/[a-z0-9]+(?:-[a-z0-9]+)*)*$"
PYTHON_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$"

EntryId = Annotated[str, StringConstraints(pattern=KEBAB_ID, max_length=64)]
BranchPath = Annotated[str, StringConstraints(pattern=BRANCH_PATH)]
PythonPath = Annotated[str, StringConstraints(pattern=PYTHON_PATH)]
Text = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]


class Kind(str, Enum):
    """What an entry describes."""

    survey = "survey"
    method = "method"
    objective = "objective"
    evaluation = "evaluation"
    application = "application"
    direction = "direction"


class TeacherAccess(str, Enum):
    """What the student needs from the teacher (white-box: logits or hidden states; black-box: text)."""

    logits = "logits"
    hidden_states = "hidden-states"
    text = "text"
    not_applicable = "not-applicable"


class Status(str, Enum):
    """Whether the knowledge base ships runnable code for the entry."""

    implemented = "implemented"
    planned = "planned"
    not_applicable = "not-applicable"


class RelationType(str, Enum):
    """Typed links between entries."""

    extends = "extends"
    uses = "uses"
    compared_with = "compared-with"
    applied_in = "applied-in"
    variant_of = "variant-of"


class Placement(str, Enum):
    """Where the Yang et al. survey puts an entry."""

    in_survey = "in-survey"
    beyond_survey = "beyond-survey"
    survey_itself = "survey-itself"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Equation(_Strict):
    """One displayed equation, written in LaTeX without surrounding dollars."""

    label: Text = Field(description="What the equation computes, e.g. 'Token-level forward KL'.")
    latex: Text = Field(
        description="LaTeX body, e.g. '\\mathrm{KL}(p\\,\\|\\,q)=\\sum_v p(v)\\log\\frac{p(v)}{q(v)}'."
    )
    where: str | None = Field(None, description="Optional explanation of the symbols.")


class Hyperparameter(_Strict):
    """A knob of the method with its default and where the paper states that default."""

    name: Text
    default: str | int | float | bool | None = Field(
        description="The default used by the reference implementation."
    )
    description: Text
    source: Text = Field(
        description="Where the value comes from, e.g. 'Ko et al. 2024, §3.1' or 'TRL GKDConfig'."
    )


class Implementation(_Strict):
    """Where the runnable code lives."""

    module: PythonPath = Field(
        description="Module that registers this entry's id in reference_impls.registry."
    )
    api: list[PythonPath] = Field(
        default_factory=list,
        description="Dotted paths of the public functions shown on the page (rendered by mkdocstrings).",
    )


class Relation(_Strict):
    """A typed link to another entry."""

    type: RelationType
    target: EntryId
    note: str | None = None


class AlternativePlacement(_Strict):
    """A placement another source prefers, recorded with the reason we did not follow it."""

    branch: BranchPath
    source: Text
    reason: Text


class SurveyPlacement(_Strict):
    """Where the Yang et al. survey discusses the entry, or that it goes beyond the survey."""

    placement: Placement
    section: str | None = Field(None, description="Survey section, e.g. '§3.1 Logits-based KD'.")
    note: str | None = None
    alternatives: list[AlternativePlacement] = Field(default_factory=list)


class PeerImplementation(_Strict):
    """Where another framework implements the entry, under which name, and how its convention maps to ours."""

    framework: Text = Field(description="The peer framework, e.g. 'TRL' or 'torchtune'.")
    name: Text = Field(description="Its trainer, function or option, e.g. 'GKDTrainer (lmbda=0, beta=0)'.")
    convention: str | None = Field(
        None, description="How its arguments and values map to the kdatlas implementation (β direction, T², CE form, ...)."
    )
    source: Text = Field(description="Where this was read: the peer's file or docs page (and commit).")
    parity: str | None = Field(
        None, description="Case id in benchmarks/results/peer_parity.json that checks the mapping numerically."
    )


class Entry(_Strict):
    """One node of the knowledge base: a method, an objective, an evaluation, an application, ..."""

    id: EntryId = Field(
        description="Stable kebab-case id; never reused. Renames keep the old id in former_ids."
    )
    kind: Kind
    name: Text
    branch: BranchPath = Field(description="Branch path; must equal the folder the file lives in.")
    summary: Text = Field(description="Two to four sentences in our own words.")
    key_idea: Text
    equations: list[Equation] = Field(default_factory=list)
    algorithm: list[Text] = Field(default_factory=list, description="Algorithm steps, in order.")
    hyperparameters: list[Hyperparameter] = Field(default_factory=list)
    preconditions: list[Text] = Field(default_factory=list)
    pitfalls: list[Text] = Field(default_factory=list)
    papers: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        min_length=1, description="BibTeX keys in bib/*.bib; the first is the primary paper."
    )
    year: int = Field(ge=1950, le=2100)
    venue: Text
    teacher_access: TeacherAccess
    status: Status
    status_reason: str | None = Field(
        None, description="Required when status is 'planned': what is missing and why."
    )
    implementation: Implementation | None = None
    tags: list[EntryId] = Field(default_factory=list, description="Tags from taxonomy/vocabulary.yaml.")
    relations: list[Relation] = Field(default_factory=list)
    survey: SurveyPlacement
    run_notes: str | None = Field(
        None, description="What the embedded CPU run shows, and what it cannot show."
    )
    former_ids: list[EntryId] = Field(default_factory=list, description="Ids this entry had before a rename.")
    peers: list[PeerImplementation] = Field(
        default_factory=list, description="Implementations in peer frameworks, for the peers matrix."
    )

    @model_validator(mode="after")
    def _status_matches_implementation(self) -> Entry:
        if self.status is Status.implemented and self.implementation is None:
            raise ValueError(
                "status is 'implemented' but there is no 'implementation' — add implementation.module "
                "or set status: planned with a status_reason"
            )
        if self.status is not Status.implemented and self.implementation is not None:
            raise ValueError(
                f"status is '{self.status.value}' but an 'implementation' is given — set status: implemented"
            )
        if self.status is Status.planned and not (self.status_reason or "").strip():
            raise ValueError("status is 'planned' but 'status_reason' is empty — say what is missing and why")
        return self

    @property
    def primary_paper(self) -> str:
        """The BibTeX key of the entry's own paper."""
        return self.papers[0]


class Branch(_Strict):
    """A folder of the taxonomy tree, described in its ``_branch.yaml``."""

    id: BranchPath = Field(description="Branch path; must equal the folder path under taxonomy/.")
    name: Text
    description: Text
    survey_section: str | None = Field(
        None, description="Matching section of the Yang et al. survey, if any."
    )
    order: int = Field(0, description="Position among its siblings (ascending).")

    @property
    def parent(self) -> str | None:
        """The parent branch path, or None for a top-level branch."""
        return self.id.rsplit("/", 1)[0] if "/" in self.id else None

    @property
    def depth(self) -> int:
        """0 for top-level branches."""
        return self.id.count("/")


class Vocabulary(_Strict):
    """The controlled tag vocabulary (``taxonomy/vocabulary.yaml``)."""

    tags: dict[EntryId, Text] = Field(description="Tag → one-line meaning.")


def slug_to_title(slug: str) -> str:
    """'white-box/logits' → 'Logits' (used only where a branch has no name yet)."""
    return re.sub(r"[-_]", " ", slug.rsplit("/", 1)[-1]).capitalize()
