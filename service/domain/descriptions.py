"""What each permission of the catalog means, in words: ListPermissions serves it to the UIs that create keys
(the seeds' "select the required permissions" step).

Flowise's catalog is described here from its own vocabulary: a phrase per category and per verb, and a
sentence of its own for each permission the phrase would say too little about. A category an operator adds
(KEYGATE_CATALOG), or a verb an operator adds to a Flowise category, gets a generic description: keygate
cannot know what it means, only what it implies and what it acts on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .permissions import WILDCARD_VERB, Catalog

# What each Flowise category's records are, as the object of a verb.
FLOWISE_NOUNS: Mapping[str, str] = {
    "chatflows": "chatflows",
    "agentflows": "agentflows",
    "tools": "custom tools",
    "assistants": "assistants",
    "credentials": "credentials (the secrets flows use to reach other services)",
    "variables": "variables",
    "apikeys": "API keys",
    "documentStores": "document stores",
    "datasets": "evaluation datasets",
    "executions": "agentflow executions",
    "evaluators": "evaluators",
    "evaluations": "evaluations",
    "workspace": "workspaces",
    "logs": "logs and the audit trail",
    "loginActivity": "login activity",
    "auditLogs": "the audit logs",
}

FLOWISE_VERBS: Mapping[str, str] = {
    "view": "See {}",
    "create": "Create {}",
    "update": "Change {}",
    "delete": "Delete {}",
    "duplicate": "Duplicate {}",
    "export": "Export {}",
    "import": "Import {}",
}

# Permissions whose meaning is not "<verb> <category>".
FLOWISE_SENTENCES: Mapping[str, str] = {
    "chatflows:config": "Change the configuration of chatflows (rate limits, starter prompts, speech, leads)",
    "chatflows:domains": "Set the domains allowed to embed chatflows",
    "agentflows:config": "Change the configuration of agentflows (rate limits, starter prompts, speech, leads)",
    "agentflows:domains": "Set the domains allowed to embed agentflows",
    "credentials:share": "Share credentials with other workspaces",
    "documentStores:add-loader": "Add document loaders to document stores",
    "documentStores:delete-loader": "Remove document loaders from document stores",
    "documentStores:preview-process": "Preview how documents are split and processed",
    "documentStores:upsert-config": "Upsert documents into vector stores and change that configuration",
    "evaluations:run": "Run evaluations",
    "templates:marketplace": "See the marketplace templates",
    "templates:custom": "See and save custom templates",
    "templates:custom-delete": "Delete custom templates",
    "templates:toolexport": "Save tools as templates",
    "templates:flowexport": "Save flows as templates",
    "templates:custom-share": "Share custom templates",
    "workspace:add-user": "Add users to workspaces",
    "workspace:unlink-user": "Remove users from workspaces",
    "users:manage": "Manage users",
    "roles:manage": "Manage roles",
    "sso:manage": "Configure single sign-on",
    "predictions:create": "Run chatflows and agentflows (the prediction API)",
}


@dataclass(frozen=True, slots=True)
class PermissionInfo:
    """One entry of the listed catalog: a grantable permission, concrete or `<category>:*`."""

    name: str
    description: str
    implies: tuple[str, ...]  # what holding it grants besides itself
    collections: tuple[str, ...]  # what its actions act on


def describe(permission: str) -> str:
    """The description of one grantable permission (a catalog entry or `<category>:*`)."""
    category, _, verb = permission.partition(":")
    if verb == WILDCARD_VERB:
        return f"Every permission of {category}, including those added to it later"
    if permission in FLOWISE_SENTENCES:
        return FLOWISE_SENTENCES[permission]
    if category in FLOWISE_NOUNS and verb in FLOWISE_VERBS:
        return FLOWISE_VERBS[verb].format(FLOWISE_NOUNS[category])
    return f"{verb!r} on {category} (defined by this deployment's catalog)"


def list_permissions(catalog: Catalog) -> list[PermissionInfo]:
    """Every permission a key may be granted through the API, sorted by name: the concrete ones and the
    wildcard of each category (`*` is left out: only bootstrap grants it)."""
    names = catalog.permissions() + [f"{category}:{WILDCARD_VERB}" for category in catalog.verbs]
    return [
        PermissionInfo(name, describe(name), tuple(sorted(catalog.expand([name]) - {name})),
                       catalog.collections(name))
        for name in sorted(names)
    ]
