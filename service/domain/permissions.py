"""The permission catalog and its implication rules.

A permission is `<category>:<verb>`. Rules, enforced here and nowhere else:
- any verb of a category implies `<category>:view` (when the category has `view`);
- `<category>:*` grants every verb of the category;
- `*` grants everything and belongs to root keys only.

The catalog also says what each action acts on: the collections of its category (by default the
collection of the category's own name; `predictions` acts on chatflows and agentflows). Those
collections, in the catalog's spelling, are the only first segments a resource name may have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import InvalidArgument

ROOT = "*"
WILDCARD_VERB = "*"
VIEW = "view"

# Flowise's RBAC catalog (packages/server/src/enterprise/rbac/Permissions.ts) plus the seeds'
# `predictions:create`, which Flowise documents but never checks.
FLOWISE_CATALOG: Mapping[str, tuple[str, ...]] = {
    "chatflows": ("view", "create", "update", "duplicate", "delete", "export", "import", "config", "domains"),
    "agentflows": ("view", "create", "update", "duplicate", "delete", "export", "import", "config", "domains"),
    "tools": ("view", "create", "update", "delete", "export"),
    "assistants": ("view", "create", "update", "delete"),
    "credentials": ("view", "create", "update", "delete", "share"),
    "variables": ("view", "create", "update", "delete"),
    "apikeys": ("view", "create", "update", "delete", "import"),
    "documentStores": (
        "view", "create", "update", "delete", "add-loader", "delete-loader", "preview-process", "upsert-config",
    ),
    "datasets": ("view", "create", "update", "delete"),
    "executions": ("view", "update", "delete"),
    "evaluators": ("view", "create", "update", "delete"),
    "evaluations": ("view", "create", "update", "delete", "run"),
    "templates": ("marketplace", "custom", "custom-delete", "toolexport", "flowexport", "custom-share"),
    "workspace": ("view", "create", "update", "add-user", "unlink-user", "delete", "export", "import"),
    "users": ("manage",),
    "roles": ("manage",),
    "sso": ("manage",),
    "logs": ("view",),
    "auditLogs": ("view",),
    "loginActivity": ("view", "delete"),
    "predictions": ("create",),
}

# Categories whose actions act on collections other than the one of their own name.
FLOWISE_COLLECTIONS: Mapping[str, tuple[str, ...]] = {
    "predictions": ("chatflows", "agentflows"),
}


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every permission keygate knows. Built once at start-up; operators may add categories and verbs."""

    verbs: Mapping[str, frozenset[str]]
    acts_on: Mapping[str, tuple[str, ...]]  # category -> the collections its actions apply to
    _spelling: Mapping[str, str] = field(init=False, repr=False, compare=False)  # lower case -> catalog's

    def __post_init__(self) -> None:
        spelling: dict[str, str] = {}
        for name in sorted({c for collections in self.acts_on.values() for c in collections}):
            if spelling.setdefault(name.lower(), name) != name:
                raise InvalidArgument("catalog", f"collections {spelling[name.lower()]!r} and {name!r} differ only "
                                                 "in case; a resource has one spelling")
        object.__setattr__(self, "_spelling", spelling)

    @classmethod
    def build(cls, extra: Mapping[str, object] | None = None) -> Catalog:
        """The Flowise catalog merged with an operator's `extra`, each name validated.

        `extra` maps a category to its verbs (`{billing: [view, charge]}`: it acts on the collection
        `billing`) or to `{verbs: [...], collections: [...]}` when it acts on other collections.
        """
        merged: dict[str, set[str]] = {c: set(v) for c, v in FLOWISE_CATALOG.items()}
        acts_on: dict[str, tuple[str, ...]] = {c: FLOWISE_COLLECTIONS.get(c, (c,)) for c in FLOWISE_CATALOG}
        for category, entry in (extra or {}).items():
            _check_name(category, "category")
            verbs, collections = _entry(category, entry)
            for verb in verbs:
                _check_name(verb, f"verb of {category!r}")
            for collection in collections:
                _check_name(collection, f"collection of {category!r}")
            merged.setdefault(category, set()).update(verbs)
            acts_on[category] = tuple(collections) or acts_on.get(category, (category,))
        return cls({c: frozenset(v) for c, v in merged.items()}, acts_on)

    def collection(self, name: str) -> str | None:
        """The catalog's spelling of a collection named in any case, or None if there is no such collection."""
        return self._spelling.get(name.lower())

    def collections(self, action: str) -> tuple[str, ...]:
        """The collections an action (a catalog permission) applies to."""
        return self.acts_on[action.partition(":")[0]]

    def permissions(self) -> list[str]:
        """Every concrete permission, sorted."""
        return sorted(f"{c}:{v}" for c, verbs in self.verbs.items() for v in verbs)

    def validate_grant(self, permission: str, field: str) -> str:
        """A permission a key may hold: a catalog entry, `<category>:*`, or `*`."""
        if permission == ROOT:
            return permission
        category, sep, verb = permission.partition(":")
        if not sep or category not in self.verbs or (verb != WILDCARD_VERB and verb not in self.verbs[category]):
            raise InvalidArgument(field, f"unknown permission {permission!r}; see the catalog in the README")
        return permission

    def validate_action(self, action: str, field: str = "action") -> str:
        """An action a request may ask about: a concrete catalog entry, never a wildcard."""
        category, sep, verb = action.partition(":")
        if not sep or verb not in self.verbs.get(category, ()):
            raise InvalidArgument(field, f"unknown action {action!r}; an action is one catalog permission")
        return action

    def expand(self, granted: Iterable[str]) -> frozenset[str]:
        """Everything `granted` implies: the concrete permissions, the wildcards, and `*` itself if held.

        `action in expand(g)` answers "may g do action"; `all(p in expand(g) for p in wanted)`
        answers "is wanted within g", which is how escalation is refused.
        """
        out: set[str] = set()
        for permission in granted:
            if permission == ROOT:
                out.add(ROOT)
                out.update(f"{c}:{WILDCARD_VERB}" for c in self.verbs)
                out.update(self.permissions())
                continue
            category, _, verb = permission.partition(":")
            verbs = self.verbs.get(category, frozenset())
            if verb == WILDCARD_VERB:
                out.add(permission)
                out.update(f"{category}:{v}" for v in verbs)
            elif verb in verbs:
                out.add(permission)
                if VIEW in verbs:
                    out.add(f"{category}:{VIEW}")
        return frozenset(out)


def _entry(category: str, entry: object) -> tuple[list[str], list[str]]:
    """An operator's catalog entry as (verbs, collections); InvalidArgument("catalog") for any other shape."""
    if isinstance(entry, Mapping):
        unknown = set(entry) - {"verbs", "collections"}
        if unknown:
            raise InvalidArgument("catalog", f"categories.{category} has unknown fields {sorted(map(str, unknown))}; "
                                             "use 'verbs' and 'collections'")
        verbs, collections = entry.get("verbs", []), entry.get("collections", [])
    else:
        verbs, collections = entry, []
    for value, what in ((verbs, "verbs"), (collections, "collections")):
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise InvalidArgument("catalog", f"categories.{category}: {what} must be a list of names")
    return verbs, collections


def _check_name(name: str, what: str) -> None:
    if not name or not all(c.isalnum() or c == "-" for c in name) or not name[0].isalpha():
        raise InvalidArgument("catalog", f"{what} {name!r} must be letters, digits and '-', starting with a letter")
