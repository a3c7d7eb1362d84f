"""A name-keyed registry: one implementation for priors, likelihoods, estimators, data sets.

Registering a name twice raises (a silent overwrite hides bugs); looking up an unknown name
raises a ``ValueError`` that lists the known names. ``names()`` feeds the CLI's ``choices``
and the tests' parametrisation, so a registered component is on the CLI and under test at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


_OPTION_GROUPS: dict[str, list[Registry]] = {}


class Registry(Generic[T]):
    """Maps names to objects (usually classes or factories) of one kind.

    Args:
        kind: what is registered, used in error messages (e.g. ``"likelihood"``).
        options: the name of a group of registries whose entries share one set of option
            names (priors, likelihoods and guides share ``"model components"``): :meth:`build`
            accepts an option that some entry of the group declares and refuses any other.
            ``None``: this registry is a group of its own.
    """

    def __init__(self, kind: str, options: str | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._group = _OPTION_GROUPS.setdefault(options, []) if options else [self]
        if options:
            self._group.append(self)

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(value: T) -> T:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (to {self._entries[name]!r}); "
                    "pick another name"
                )
            self._entries[name] = value
            return value

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> T:
        """Remove and return the entry ``name`` (for plug-ins that are unloaded, and tests)."""
        self.get(name)
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; ``ValueError`` naming the known ones if none is."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, *args, **options):
        """Call the entry ``name`` with ``args`` and those ``options`` its signature accepts.

        Lets one config hold every component's options (``sigma``, ``components``, ...):
        each component takes the ones it declares and ignores the rest. An option that no
        entry of this registry's group declares (a misspelt name) raises ``ValueError``.
        """
        factory = self.get(name)
        parameters = _parameters(factory)
        if parameters is None:  # **kwargs: it takes everything
            return factory(*args, **options)
        unknown = sorted(set(options) - self.option_names())
        if unknown:
            known = ", ".join(sorted(self.option_names()))
            raise ValueError(f"unknown {self.kind} option(s) {', '.join(unknown)}; known "
                             f"options: {known}")
        return factory(*args, **{k: v for k, v in options.items() if k in parameters})

    def option_names(self) -> set[str]:
        """Every keyword option some entry of this registry's group declares."""
        names: set[str] = set()
        for registry in self._group:
            for entry in registry._entries.values():
                parameters = _parameters(entry)
                names |= set(parameters or ())
        return names

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _parameters(factory) -> dict | None:
    """The options of a class's constructor or a function (its parameters with defaults;
    the required ones are the positional arguments of :meth:`Registry.build`); ``None`` if
    it takes ``**kwargs``."""
    target = factory.__init__ if isinstance(factory, type) else factory
    if getattr(target, "__module__", "").split(".")[0] in ("torch", "pyro"):
        return {}  # the constructor of nn.Module / PyroModule itself: no component options
    parameters = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return None
    return {k: p for k, p in parameters.items() if p.default is not p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
