"""Patching vLLM from a plugin: a function replaced once, and code run right after a module
is imported (each process imports only what it uses, so each patch waits for its module)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["mark", "when_imported"]


def mark(owner: type, name: str, fn: Callable) -> None:
    """owner.name = fn, once: vLLM may load plugins more than once in a process."""
    if not getattr(getattr(owner, name), "_emosteer", False):
        fn._emosteer = True  # type: ignore[attr-defined]
        setattr(owner, name, fn)


def when_imported(name: str, fn: Callable[[ModuleType], Any]) -> None:
    """Run fn(module) once module `name` is imported: now if it is, else right after its
    import (a one-shot finder on sys.meta_path wraps the module's exec_module)."""
    if name in sys.modules:
        fn(sys.modules[name])
        return
    sys.meta_path.insert(0, _AfterImport(name, fn))


class _AfterImport:
    """A sys.meta_path finder that finds nothing itself; it runs fn after `name` executes."""

    def __init__(self, name: str, fn: Callable[[ModuleType], Any]) -> None:
        self.name, self.fn = name, fn

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, fn = spec.loader, self.fn
        inner = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            inner(module)
            fn(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
