"""A tiny name -> factory registry, shared by faces backends, metrics and methods.

Explicit over magic: each module registers its class with a decorator at import time, and the
package ``__init__`` imports those modules, so ``names()`` is complete once the package is imported.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


def canonical_name(name: str) -> str:
    """Registry names are lower-case with hyphens; ``textual_inversion`` finds ``textual-inversion``."""
    return str(name).strip().lower().replace("_", "-")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        name = canonical_name(name)

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[canonical_name(name)]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def create(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return canonical_name(name) in self._entries
