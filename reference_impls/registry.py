"""Methods registered under their taxonomy ids.

A method module registers one function per taxonomy id with `register`. The function takes
the method's hyper-parameters as keyword arguments (with the paper's defaults) and returns a
`reference_impls.common.harness.Recipe`: the objective plus the source of the training
sequences. ``kdatlas run ID`` and ``kdatlas validate`` discover them with
`registered_methods`, which imports every method module of this package once.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# Modules of this package that hold plumbing, not methods.
_NOT_METHOD_MODULES = frozenset({"registry", "losses", "common", "blackbox"})
# Subpackages whose modules are methods (one module per method).
_METHOD_PACKAGES = ("instruction_following",)

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
    """Decorator: register ``build_recipe`` under ``method_id`` (a taxonomy entry id)."""

    def decorate(build_recipe: Callable[..., Any]) -> Callable[..., Any]:
        existing = _REGISTRY.get(method_id)
        if existing is not None and existing.module != build_recipe.__module__:
            raise ValueError(
                f"method id '{method_id}' is registered twice ({existing.module} and {build_recipe.__module__})"
            )
        _REGISTRY[method_id] = MethodRegistration(method_id, build_recipe.__module__, build_recipe)
        return build_recipe

    return decorate


def method_modules() -> list[str]:
    """Dotted names of the method modules in this package."""
    package = importlib.import_module("reference_impls")
    names = [
        f"reference_impls.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if info.name not in _NOT_METHOD_MODULES
        and info.name not in _METHOD_PACKAGES
        and not info.name.startswith("_")
    ]
    for subpackage in _METHOD_PACKAGES:
        path = importlib.import_module(f"reference_impls.{subpackage}").__path__
        names += [
            f"reference_impls.{subpackage}.{info.name}"
            for info in pkgutil.iter_modules(path)
            if not info.name.startswith("_")
        ]
    return names


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
