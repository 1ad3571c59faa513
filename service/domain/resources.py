"""Resource names and key scopes.

A resource is `collection/id` (deeper paths allowed: `documentStores/x/loaders/y`); an empty
resource is a collection-level action, whose collection is the action's category.
A scope entry names a subtree: `chatflows/abc` covers `chatflows/abc` and everything below
it; `chatflows/*` (or plain `chatflows`) covers the whole collection. An empty scope covers
every resource of the key's workspace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InvalidArgument

MAX_RESOURCE_LEN = 256
MAX_SCOPE_ENTRIES = 100
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._~-]*"
_RESOURCE_RE = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*\Z")
_PATTERN_RE = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*(/\*)?\Z")


def validate_resource(resource: str, field: str = "resource") -> str:
    """A concrete resource name (no wildcards). Empty is allowed: it means the collection."""
    if resource and (len(resource) > MAX_RESOURCE_LEN or not _RESOURCE_RE.match(resource)):
        raise InvalidArgument(
            field, "must look like 'collection/id' with letters, digits and '._~-' (at most 256 characters)"
        )
    return resource


def validate_pattern(pattern: str, field: str) -> str:
    """A scope entry: a resource name, optionally ending in `/*`."""
    if len(pattern) > MAX_RESOURCE_LEN or not _PATTERN_RE.match(pattern):
        raise InvalidArgument(
            field, f"{pattern!r} is not a resource pattern; use 'collection/id' or 'collection/*'"
        )
    return pattern


def _root(pattern: str) -> str:
    return pattern[:-2] if pattern.endswith("/*") else pattern


def _within(name: str, root: str) -> bool:
    return name == root or name.startswith(root + "/")


@dataclass(frozen=True, slots=True)
class Scope:
    """A compiled scope: the subtree roots a key may touch. No roots = unrestricted."""

    roots: tuple[str, ...] = ()

    @classmethod
    def compile(cls, patterns: Iterable[str]) -> Scope:
        return cls(tuple(sorted({_root(p) for p in patterns})))

    @property
    def unrestricted(self) -> bool:
        return not self.roots

    def allows(self, resource: str, action: str) -> bool:
        """May a key with this scope act on `resource` (or, if empty, on the action's collection)?"""
        if not self.roots:
            return True
        name = resource or action.partition(":")[0]
        return any(_within(name, root) for root in self.roots)

    def covers(self, other: Scope) -> bool:
        """Is every resource `other` allows also allowed by this scope?"""
        if not self.roots:
            return True
        if not other.roots:
            return False
        return all(any(_within(theirs, mine) for mine in self.roots) for theirs in other.roots)
