"""The code an entry page offers: its recipe, its losses in your own trainer, its pipeline.

Snippets come from data, not from reading source files. Each keyword argument is one of the
entry's YAML ``hyperparameters``, at its cited default and commented with its ``source`` (the
style of TRL's paper index). Which arguments a function takes, and which it requires, comes
from `inspect.signature` of the imported ``implementation.api`` object. The code around the calls
(imports, the trainer loop, the pipeline) is in ``templates/snippets/``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Literal

from kdatlas.model import Entry, TeacherAccess
from kdatlas.site.links import Site, one_line
from kdatlas.site.render import render

SnippetKind = Literal["recipe", "pipeline", "loss", "call"]

# How the trainer snippet passes the usual loss inputs (the losses never shift: logits at
# position i are scored against label i + 1).
TRAINER_ARGUMENTS = {
    "student_logits": "student_logits[:, :-1]",
    "teacher_logits": "teacher_logits[:, :-1]",
    "labels": 'batch["labels"][:, 1:]',
}
LOGITS_INPUTS = frozenset({"student_logits", "teacher_logits"})
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class Argument:
    """One argument of a call as written in a snippet, with where its value comes from."""

    text: str
    comment: str = ""


@dataclass(frozen=True)
class Snippet:
    """One Python block of an entry page and the API object it calls."""

    kind: SnippetKind
    api: str
    code: str


def _code(template: str, **context: object) -> str:
    """A code template rendered without the newline its file ends with."""
    return render(template, **context).rstrip("\n")


def is_text_pipeline(entry: Entry) -> bool:
    """Whether the entry's implementation is a black-box data pipeline (the teacher's text only),
    run by the pipeline runner rather than the white-box training harness."""
    return entry.teacher_access is TeacherAccess.text


def _signature(site: Site, dotted: str) -> tuple[object, inspect.Signature] | None:
    found = site.api_object(dotted)
    if not callable(found):
        return None
    try:
        return found, inspect.signature(found)
    except (TypeError, ValueError):  # a builtin without a signature
        return None


def _required(parameter: inspect.Parameter) -> bool:
    return parameter.default is inspect.Parameter.empty and parameter.kind in (
        *_NAMED,
        inspect.Parameter.POSITIONAL_ONLY,
    )


def call_arguments(entry: Entry, signature: inspect.Signature, inputs: dict[str, str]) -> list[Argument]:
    """Arguments of a call: the required ones (as ``inputs`` spells them, else by name) and optional
    labels where ``inputs`` has them, then every YAML hyper-parameter the function takes, at its
    default and commented with its source, in the order of the hyper-parameter table."""
    cited = {h.name: h for h in entry.hyperparameters if h.default is not None}

    def from_yaml(name: str) -> Argument:
        return Argument(f"{name}={cited[name].default!r}", one_line(cited[name].source))

    arguments: list[Argument] = []
    by_position = True  # until a parameter is skipped or named: what follows must be named too
    for name, parameter in signature.parameters.items():
        required = _required(parameter)
        if required and name in cited:
            arguments.append(from_yaml(name))
            by_position = False
        elif required or (name == "labels" and "labels" in inputs):
            by_position = by_position and parameter.kind is not inspect.Parameter.KEYWORD_ONLY
            value = inputs.get(name, name)
            arguments.append(Argument(value if by_position else f"{name}={value}"))
        else:
            by_position = False
    for hyper in entry.hyperparameters:
        parameter = signature.parameters.get(hyper.name)
        optional = parameter is not None and not _required(parameter) and parameter.kind in _NAMED
        if optional and hyper.name in cited:
            arguments.append(from_yaml(hyper.name))
    return arguments


def format_call(target: str, name: str, arguments: list[Argument], multiline: bool = False) -> str:
    """``target = name(...)``, one argument a line when any carries a comment (or when asked)."""
    if not arguments:
        return f"{target} = {name}()"
    if not multiline and not any(a.comment for a in arguments):
        return f"{target} = {name}({', '.join(a.text for a in arguments)})"
    lines = [f"    {a.text},{'  # ' + a.comment if a.comment else ''}" for a in arguments]
    return "\n".join([f"{target} = {name}(", *lines, ")"])


def _returns_tensor(signature: inspect.Signature) -> bool:
    annotation = signature.return_annotation
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return text in {"Tensor", "torch.Tensor"}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def recipe_api(entry: Entry, site: Site) -> str | None:
    """The API path of the entry's recipe builder: the first function of the implementation
    module that needs no argument (its keyword arguments are the method's hyper-parameters)."""
    if entry.implementation is None:
        return None
    for dotted in entry.implementation.api:
        found = _signature(site, dotted)
        if found is None:
            continue
        function, signature = found
        if (
            inspect.isfunction(function)
            and function.__module__ == entry.implementation.module
            and not any(_required(p) for p in signature.parameters.values())
        ):
            return dotted
    return None


def recipe_snippet(entry: Entry, site: Site) -> Snippet | None:
    """``recipe = builder(hyper=default,  # source ...)``: what ``kdatlas run <id>`` runs."""
    dotted = recipe_api(entry, site)
    found = _signature(site, dotted) if dotted else None
    if dotted is None or found is None:
        return None
    module, _, name = dotted.rpartition(".")
    call = format_call("recipe", name, call_arguments(entry, found[1], {}))
    return Snippet("recipe", dotted, _code("snippets/recipe.py.j2", module=module, name=name, call=call))


def pipeline_snippet(entry: Entry, site: Site) -> Snippet | None:
    """'Use the pipeline in your own code': the recipe run against a teacher endpoint, and its data."""
    recipe = recipe_snippet(entry, site)
    if recipe is None:
        return None
    return Snippet("pipeline", recipe.api, _code("snippets/pipeline.py.j2", recipe=recipe.code))


def api_snippets(entry: Entry, site: Site) -> list[Snippet]:
    """'Use the loss in your own trainer': every API object but the recipe, called with its inputs."""
    if entry.implementation is None:
        return []
    recipe = recipe_api(entry, site)
    snippets = []
    for dotted in entry.implementation.api:
        found = _signature(site, dotted)
        if dotted == recipe or found is None:
            continue
        api, signature = found
        module, _, name = dotted.rpartition(".")
        tensor_loss = _returns_tensor(signature) and name.endswith("loss")
        if set(signature.parameters) >= LOGITS_INPUTS:
            target = "loss" if _returns_tensor(signature) else "result"
            call = format_call(target, name, call_arguments(entry, signature, TRAINER_ARGUMENTS), True)
            template, kind = "snippets/loss_in_trainer.py.j2", "loss"
        else:
            target = _snake(name) if inspect.isclass(api) else "loss" if tensor_loss else "result"
            call = format_call(target, name, call_arguments(entry, signature, {}))
            template, kind = "snippets/call.py.j2", "call"
        code = _code(template, module=module, name=name, call=call, backward=target == "loss")
        snippets.append(Snippet(kind, dotted, code))
    return snippets


def page_snippets(entry: Entry, site: Site) -> list[Snippet]:
    """Every Python block the entry's page shows (the black-box pipeline embeds its recipe)."""
    if entry.implementation is None:  # only implemented entries have one
        return []
    if is_text_pipeline(entry):
        return [s for s in (pipeline_snippet(entry, site),) if s is not None]
    recipe = recipe_snippet(entry, site)
    return [*([recipe] if recipe else []), *api_snippets(entry, site)]
