"""The permission catalog and its implication rules.

A permission is `<category>:<verb>`. Rules, enforced here and nowhere else:
- any verb of a category implies `<category>:view` (when the category has `view`);
- `<category>:*` grants every verb of the category;
- `*` grants everything and belongs to root keys only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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
    "executions": ("view", "delete"),
    "evaluators": ("view", "create", "update", "delete"),
    "evaluations": ("view", "create", "update", "delete", "run"),
    "templates": ("marketplace", "custom", "custom-delete", "toolexport", "flowexport", "custom-share"),
    "workspace": ("view", "create", "update", "add-user", "unlink-user", "delete", "export", "import"),
    "users": ("manage",),
    "roles": ("manage",),
    "sso": ("manage",),
    "logs": ("view",),
    "loginActivity": ("view", "delete"),
    "predictions": ("create",),
}


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every permission keygate knows. Built once at start-up; operators may add categories and verbs."""

    verbs: Mapping[str, frozenset[str]]

    @classmethod
    def build(cls, extra: Mapping[str, Iterable[str]] | None = None) -> Catalog:
        """The Flowise catalog merged with `extra` ({category: [verb, ...]}), each name validated."""
        merged: dict[str, set[str]] = {c: set(v) for c, v in FLOWISE_CATALOG.items()}
        for category, verbs in (extra or {}).items():
            _check_name(category, "category")
            for verb in verbs:
                _check_name(verb, f"verb of {category!r}")
            merged.setdefault(category, set()).update(verbs)
        return cls({c: frozenset(v) for c, v in merged.items()})

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


def _check_name(name: str, what: str) -> None:
    if not name or not all(c.isalnum() or c == "-" for c in name) or not name[0].isalpha():
        raise InvalidArgument("catalog", f"{what} {name!r} must be letters, digits and '-', starting with a letter")
