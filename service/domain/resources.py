"""Resource names: one canonical spelling, computed here for every door and for what is stored.

A resource is `collection/id` (deeper paths allowed: `documentStores/x/loaders/y`); an empty
resource is a collection-level action, acting on the action's collections. Canonical means:
- the collection as the catalog spells it, whatever case it arrives in (an unknown one is refused);
- every segment that is a UUID (32 hex digits, hyphens anywhere) in lower-case 8-4-4-4-12 form,
  since PostgreSQL, where Flowise keeps its records, reads `9B2C…`, `9b2c…` and the hyphen-less
  form as one id; other segments stay as given;
- the resource belongs to a collection the action acts on (`predictions:create` acts on chatflows
  and agentflows, `chatflows:view` on chatflows only).
A scope entry names a subtree: `chatflows/abc` covers `chatflows/abc` and everything below it;
`chatflows/*` (plain `chatflows` on input) covers the whole collection. An empty scope covers every
resource of the key's workspace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import KEY_SHAPED, InvalidArgument
from .permissions import Catalog

MAX_RESOURCE_LEN = 256
MAX_SCOPE_ENTRIES = 100
WHOLE = "*"
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._~-]*"
_RESOURCE_RE = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*\Z")
_PATTERN_RE = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*(/\*)?\Z")
_UUID_CHARS = frozenset("0123456789abcdefABCDEF-")
_SHAPE = "letters, digits and '._~-' in segments separated by '/', at most 256 characters"


@dataclass(frozen=True, slots=True)
class Target:
    """What a request acts on, canonical: one resource, or (resource "") the action's collections."""

    resource: str
    action: str
    collections: tuple[str, ...]


def canonical_id(segment: str) -> str:
    """A UUID in its one spelling (lower case, 8-4-4-4-12); any other segment unchanged."""
    if 32 <= len(segment) <= 64 and _UUID_CHARS.issuperset(segment):
        digits = segment.replace("-", "").lower()
        if len(digits) == 32:
            return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    return segment


def _refuse_key_shaped(name: str, field: str) -> None:
    """A name holding what looks like an API key is refused before it can be stored, audited or quoted."""
    if KEY_SHAPED.search(name):
        raise InvalidArgument(field, "holds what looks like an API key; a resource name never carries one")


def _canonical_path(catalog: Catalog, segments: list[str], field: str) -> str:
    collection = catalog.collection(segments[0])
    if collection is None:
        raise InvalidArgument(field, f"unknown collection {segments[0]!r}; collections come from the permission "
                                     "catalog (chatflows, agentflows, tools, ...)")
    return "/".join([collection, *map(canonical_id, segments[1:])])


def canonical_resource(catalog: Catalog, resource: str, field: str = "resource") -> str:
    """A concrete resource name (no wildcards) in its canonical spelling. Empty stays empty: the collection."""
    if not resource:
        return resource
    _refuse_key_shaped(resource, field)
    if len(resource) > MAX_RESOURCE_LEN or not _RESOURCE_RE.match(resource):
        raise InvalidArgument(field, f"must look like 'collection/id': {_SHAPE}")
    segments = resource.split("/")
    if len(segments) < 2:
        raise InvalidArgument(field, f"name one resource, such as '{segments[0]}/<id>'; leave it empty for an "
                                     "action on the whole collection")
    return _canonical_path(catalog, segments, field)


def canonical_pattern(catalog: Catalog, pattern: str, field: str) -> str:
    """A scope entry in its canonical spelling: `collection/*`, or a resource (the root of a subtree)."""
    _refuse_key_shaped(pattern, field)
    if len(pattern) > MAX_RESOURCE_LEN or not _PATTERN_RE.match(pattern):
        raise InvalidArgument(field, f"{pattern!r} is not a resource pattern; use 'collection/id' or 'collection/*'")
    segments = pattern.split("/")
    if segments[-1] == WHOLE:
        segments.pop()  # `chatflows/abc/*` is the subtree `chatflows/abc` names already
    path = _canonical_path(catalog, segments, field)
    return f"{path}/{WHOLE}" if len(segments) == 1 else path


def target(catalog: Catalog, resource: str, action: str, at: str = "") -> Target:
    """The canonical Target of a request; InvalidArgument naming the field (`at` prefixes it: `items[2].`)."""
    catalog.validate_action(action, f"{at}action")
    collections = catalog.collections(action)
    resource = canonical_resource(catalog, resource, f"{at}resource")
    collection = resource.partition("/")[0]
    if resource and collection not in collections:
        raise InvalidArgument(f"{at}resource", f"{action!r} does not act on {collection!r}; it acts on "
                                               + ", ".join(collections))
    return Target(resource, action, collections)


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

    def allows(self, target: Target) -> bool:
        """May a key with this scope act on the target? A collection-level action needs every collection
        it acts on in full: a key scoped to some chatflows may not act on chatflows as a whole."""
        if not self.roots:
            return True
        if target.resource:
            return any(_within(target.resource, root) for root in self.roots)
        return all(collection in self.roots for collection in target.collections)

    def covers(self, other: Scope) -> bool:
        """Is every resource `other` allows also allowed by this scope?"""
        if not self.roots:
            return True
        if not other.roots:
            return False
        return all(any(_within(theirs, mine) for mine in self.roots) for theirs in other.roots)
