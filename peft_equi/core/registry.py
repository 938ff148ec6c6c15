"""Name registries for adapters, backends and presets, extensible by third parties.

Register in code with the decorators, or from another distribution through Python entry
points in the groups ``peft_equi.adapters``, ``peft_equi.backends`` and
``peft_equi.presets``; each entry point names a module (imported for its decorators) or an
object to register.  Entry points are loaded on first lookup.

The core names no package above it: the built-in adapters, backends and presets register
themselves when their packages are imported, which ``import peft_equi`` does (a registry's
``builtins`` are modules of the registering package itself, imported on first lookup).

.. code-block:: toml

    [project.entry-points."peft_equi.adapters"]
    my_adapter = "my_pkg.adapter:MyAdapter"
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with entry-point discovery and helpful errors."""

    def __init__(self, what: str, group: str, *, builtins: tuple[str, ...] = ()) -> None:
        self.what = what
        self.group = group
        self._builtins = builtins
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, item: T, *, overwrite: bool = False) -> T:
        """Add ``item`` under ``name``; refuses to replace an existing name unless ``overwrite``."""
        if not overwrite and name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.what} {name!r} is already registered (pass overwrite=True to replace it)")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The item called ``name``; the error lists the known names."""
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.what, name, self.names()) from None

    def names(self) -> list[str]:
        """Sorted registered names."""
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtins:
            importlib.import_module(module)
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the library
                warnings.warn(f"could not load {self.what} entry point {ep.name!r}: {exc}", stacklevel=2)
                continue
            if inspect.ismodule(obj) or ep.name in self._items:  # a module, or a decorated class
                continue
            self.register(ep.name, obj)


ADAPTERS: Registry = Registry("adapter", "peft_equi.adapters")
BACKENDS: Registry = Registry("backend", "peft_equi.backends")
PRESETS: Registry = Registry("preset", "peft_equi.presets")


def register_adapter(cls: type[T]) -> type[T]:
    """Class decorator: register an :class:`~peft_equi.core.adapter.Adapter` under ``cls.name``."""
    ADAPTERS.register(cls.name, cls)  # type: ignore[attr-defined]
    return cls


def register_backend(cls: type[T]) -> type[T]:
    """Class decorator: register a backend, an :class:`~peft_equi.core.adapted_layer.AdaptedLayer` subclass for
    one layer type, under ``cls.name`` (anything else is a ``TypeError``: docs/extending.md says how to write one)."""
    if not (isinstance(cls, type) and issubclass(cls, AdaptedLayer)):
        raise TypeError(
            f"register_backend takes an AdaptedLayer subclass (one class per layer type, docs/extending.md), "
            f"not {cls!r}"
        )
    BACKENDS.register(cls.name, cls)  # type: ignore[attr-defined]
    return cls


def register_preset(name: str) -> Callable[[Callable], Callable]:
    """Function decorator: register a preset, a function ``(**options) -> PeftConfig``."""

    def decorator(fn: Callable) -> Callable:
        PRESETS.register(name, fn)
        return fn

    return decorator
