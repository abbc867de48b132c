"""Methods registered under their taxonomy ids, found by walking the branch packages.

A method module registers one function per taxonomy id with `register`. The function takes
the method's hyper-parameters as keyword arguments (with the paper's defaults) and returns its
recipe. ``kdatlas run ID`` and ``kdatlas validate`` discover them with `registered_methods`.

The packages mirror the taxonomy: an entry on branch ``a/b`` is implemented under
``reference_impls/a/b/`` ('-' → '_'), e.g. ``white-box/logits`` → ``reference_impls.white_box.logits``.
Every module (or method folder) in a branch package is a method module; one whose name starts
with ``_``, and a module directly in ``white_box/`` or ``black_box/``, is shared code, never a method.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# The top-level packages whose branch subpackages hold the methods (`white_box.logits`, ...).
METHOD_ROOTS = ("white_box", "black_box")

_REGISTRY: dict[str, MethodRegistration] = {}


@dataclass(frozen=True)
class MethodRegistration:
    """A method id, the module that registered it and its recipe builder."""

    method_id: str
    module: str
    build_recipe: Callable[..., Any]

    def defaults(self) -> dict[str, Any]:
        """The builder's keyword defaults: the hyper-parameters a user may override."""
        signature = inspect.signature(self.build_recipe)
        return {
            name: parameter.default
            for name, parameter in signature.parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }


def register(method_id: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``build_recipe`` under ``method_id`` (a taxonomy entry id).

    The builder's signature is the one place a hyper-parameter and its default are written in
    code: every call (through ``kdatlas run`` or directly) binds it and stamps the resolved values
    on the recipe as ``hyperparameters``, so no builder lists them a second time.
    """

    def decorate(build_recipe: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(build_recipe)

        @functools.wraps(build_recipe)
        def build_and_record(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            recipe = build_recipe(*bound.args, **bound.kwargs)
            return dataclasses.replace(recipe, hyperparameters=dict(bound.arguments))

        existing = _REGISTRY.get(method_id)
        if existing is not None and existing.module != build_recipe.__module__:
            raise ValueError(
                f"method id '{method_id}' is registered twice ({existing.module} and {build_recipe.__module__})"
            )
        _REGISTRY[method_id] = MethodRegistration(method_id, build_recipe.__module__, build_and_record)
        return build_and_record

    return decorate


def module_for_branch(branch_id: str) -> str:
    """The package that implements the entries of a taxonomy branch: ``white-box/logits`` →
    ``reference_impls.white_box.logits``."""
    return ".".join(["reference_impls", *(part.replace("-", "_") for part in branch_id.split("/"))])


def method_modules() -> list[str]:
    """Dotted names of the method modules: every public module or package in a branch package."""
    names: list[str] = []
    for root in METHOD_ROOTS:
        package = importlib.import_module(f"reference_impls.{root}")
        for branch in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            if not branch.ispkg or branch.name.rpartition(".")[2].startswith("_"):
                continue  # a module directly in white_box/ or black_box/: shared by its branches
            path = importlib.import_module(branch.name).__path__
            # A method is a module, or a small folder when its core outgrows one file (minillm/).
            names += [
                info.name
                for info in pkgutil.iter_modules(path, f"{branch.name}.")
                if not info.name.rpartition(".")[2].startswith("_")
            ]
    return sorted(names)


def registered_methods() -> Mapping[str, MethodRegistration]:
    """Import every method module (once) and return the registry, read-only."""
    for name in method_modules():
        importlib.import_module(name)
    return MappingProxyType(_REGISTRY)


def get_method(method_id: str) -> MethodRegistration:
    """The registration for ``method_id``; a KeyError that lists what exists otherwise."""
    methods = registered_methods()
    if method_id not in methods:
        known = ", ".join(sorted(methods))
        raise KeyError(f"no implemented method '{method_id}'. Implemented: {known}")
    return methods[method_id]
