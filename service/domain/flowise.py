"""Flowise's API keys and flow bindings, and the rules for taking them into keygate.

Flowise 3.1.4 keeps each API key in plaintext in its `apikey` table (with `apiSecret`, an scrypt hash
of the same key, which its middleware checks), and the key a chatflow is restricted to in
`chat_flow.apikeyid`. An imported key must be allowed and refused exactly as Flowise allowed and
refused it, so a row Flowise itself would refuse (no workspace, an `apiSecret` that does not match,
the same key in two rows) is refused here too, with its reason, and never imported narrowed or widened.
Nothing here ever puts a key, or text holding one, in a reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import KEY_SHAPED, InvalidArgument
from .keys import FOREIGN_MIN_LEN, MAX_KEY_LEN, KeyFormat, Shape, digest
from .permissions import Catalog
from .policy import KeySpec, validate_name, validate_permissions, validate_workspace_id
from .resources import canonical_resource

# What a Flowise key may always do although its row does not say so: Flowise documents
# `predictions:create` but never checks it, so every Flowise key can call a prediction.
ALWAYS_GRANTED = ("predictions:create",)
# What `chat_flow.apikeyid` restricted to the bound key in Flowise (buildChatflow.ts: predictions).
FLOW_KEY_ACTIONS = ("predictions:create",)
# The permissions Flowise's migration AddApiKeyPermission1765360298674 gave every key older than
# its `permissions` column: a Flowise 3.0 database without the column grants each key these.
PERMISSIONS_BEFORE_THE_COLUMN = (
    "chatflows:view", "chatflows:create", "chatflows:update", "chatflows:duplicate", "chatflows:delete",
    "chatflows:export", "chatflows:import", "chatflows:config", "chatflows:domains", "agentflows:view",
    "agentflows:create", "agentflows:update", "agentflows:duplicate", "agentflows:delete", "agentflows:export",
    "agentflows:import", "agentflows:config", "agentflows:domains", "tools:view", "tools:create", "tools:update",
    "tools:delete", "tools:export", "assistants:view", "assistants:create", "assistants:update",
    "assistants:delete", "credentials:view", "credentials:create", "credentials:update", "credentials:delete",
    "variables:view", "variables:create", "variables:update", "variables:delete", "apikeys:view",
    "apikeys:create", "apikeys:update", "apikeys:delete", "documentStores:view", "documentStores:create",
    "documentStores:update", "documentStores:delete", "documentStores:add-loader", "documentStores:delete-loader",
    "documentStores:preview-process", "documentStores:upsert-config", "executions:view", "executions:delete",
    "templates:marketplace", "templates:custom", "templates:custom-delete", "templates:toolexport",
    "templates:flowexport",
)
IMPORTED_METADATA = {"imported-from": "flowise"}
# Key ids for Flowise ids that are not UUIDs (older Flowise wrote 16 random bytes in hex, which are):
# derived, so a second import finds the same key.
_ID_NAMESPACE = uuid.UUID("5d0f7c64-54a4-4a8e-9d7b-1f0b8f6a2c31")
_SCRYPT = {"n": 16384, "r": 8, "p": 1, "dklen": 64}  # Node's scryptSync defaults, as Flowise calls it


@dataclass(frozen=True, slots=True)
class FlowiseKey:
    """One `apikey` row as read. `permissions` is the stored JSON text, None when the column is absent."""

    id: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)
    key_name: str
    permissions: str | None
    workspace_id: str | None


@dataclass(frozen=True, slots=True)
class FlowiseFlow:
    """One `chat_flow` row that names a key in `apikeyid`."""

    id: str
    apikey_id: str
    workspace_id: str | None


@dataclass(frozen=True, slots=True)
class Importable:
    """A Flowise key ready to be stored: its keygate id, spec, digest and display, never the key."""

    source_id: str
    key_id: uuid.UUID
    spec: KeySpec
    digest: bytes = field(repr=False)
    display: str
    added: tuple[str, ...]  # permissions granted beyond the row's own (ALWAYS_GRANTED it lacked)


@dataclass(frozen=True, slots=True)
class Refused:
    """A Flowise key that is not imported, and why (the reason quotes no key)."""

    source_id: str
    name: str
    workspace_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class FlowBinding:
    """A Flowise flow restriction that becomes a keygate binding."""

    flow_id: str
    apikey_id: str  # as Flowise stores it, to clear exactly that value
    workspace_id: str
    resource: str
    key_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class FlowLeft:
    """A flow restriction left to Flowise (not bound in keygate), and why."""

    flow_id: str
    reason: str


def key_id(flowise_id: str) -> uuid.UUID:
    """keygate's id for a Flowise key: the same UUID when Flowise's id is one (so a re-import finds it
    and Flowise's `PUT /apikey/{id}` keeps addressing it), else one derived from it."""
    try:
        return uuid.UUID(flowise_id)
    except ValueError:
        return uuid.uuid5(_ID_NAMESPACE, flowise_id)


def secret_matches(api_key: str, api_secret: str) -> bool:
    """Does Flowise's `apiSecret` (`<scrypt hex>.<salt>`, utils/apiKey.ts) verify this key, as Flowise's
    compareKeys does? A row where it does not is one Flowise refuses."""
    stored, sep, salt = api_secret.partition(".")
    if not sep:
        return False
    try:
        expected = bytes.fromhex(stored)
        derived = hashlib.scrypt(api_key.encode(), salt=salt.encode(), **_SCRYPT)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(expected, derived)


def _shape_problem(api_key: str, key_format: KeyFormat) -> str | None:
    """Why keygate could not look this key up by digest, or None. Keys ours in shape are fine too."""
    if key_format.shape(api_key) is not Shape.MALFORMED:
        return None
    if len(api_key) > MAX_KEY_LEN:
        return f"the key is longer than {MAX_KEY_LEN} characters"
    if len(api_key) < FOREIGN_MIN_LEN:
        return f"the key is shorter than {FOREIGN_MIN_LEN} characters"
    if key_format.prefix and api_key.startswith(f"{key_format.prefix}_"):
        return (f"the key starts with keygate's prefix {key_format.prefix}_ but is not a keygate key; "
                "import with another --key-prefix")
    return "the key holds characters other than printable ASCII (or a space)"


def _permissions(row: FlowiseKey, catalog: Catalog) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the key's keygate permissions, those added); InvalidArgument naming what Flowise stored wrong."""
    if row.permissions is None:
        listed: object = list(PERMISSIONS_BEFORE_THE_COLUMN)
    else:
        try:
            listed = json.loads(row.permissions)
        except ValueError:
            raise InvalidArgument("permissions", "is not JSON") from None
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        raise InvalidArgument("permissions", "is not a JSON list of names")
    unknown = sorted({p for p in listed if p != "*" and _unknown(p, catalog)})
    if unknown:
        raise InvalidArgument("permissions", f"{', '.join(map(repr, unknown))} not in keygate's catalog; add "
                                             "them with --catalog (KEYGATE_CATALOG) or remove them in Flowise")
    added = tuple(p for p in ALWAYS_GRANTED if p not in listed)
    return validate_permissions([*listed, *added], catalog), added


def _unknown(permission: str, catalog: Catalog) -> bool:
    try:
        catalog.validate_grant(permission, "permissions")
    except InvalidArgument:
        return True
    return False


def examine(rows: Sequence[FlowiseKey], verified: Sequence[bool], catalog: Catalog,
            key_format: KeyFormat) -> list[Importable | Refused]:
    """Each row as a key to import or a refusal, in the rows' order. `verified[i]`: does row i's
    `apiSecret` verify its key (`secret_matches`, the slow part, which callers may run in parallel)?"""
    copies = Counter(row.api_key for row in rows)
    secrets = [row.api_key for row in rows if len(row.api_key) >= FOREIGN_MIN_LEN]
    out: list[Importable | Refused] = []
    for row, secret_verified in zip(rows, verified, strict=True):
        try:
            out.append(_importable(row, catalog, key_format, copies[row.api_key], secrets, secret_verified))
        except InvalidArgument as exc:
            out.append(Refused(row.id, scrub(row.key_name, secrets), row.workspace_id or "", exc.message))
    return out


def _importable(row: FlowiseKey, catalog: Catalog, key_format: KeyFormat, copies: int,
                secrets: Iterable[str], secret_verified: bool) -> Importable:
    if copies > 1:
        raise InvalidArgument("apiKey", f"the same key is in {copies} rows; Flowise answers with whichever its "
                                        "query finds first, so none of them is imported")
    problem = _shape_problem(row.api_key, key_format)
    if problem:
        raise InvalidArgument("apiKey", problem)
    if not row.workspace_id:
        raise InvalidArgument("workspaceId", "is empty; Flowise refuses a key without a workspace")
    if not secret_verified:
        raise InvalidArgument("apiSecret", "does not verify the key; Flowise refuses it")
    if any(secret in row.key_name for secret in secrets) or KEY_SHAPED.search(row.key_name):
        raise InvalidArgument("keyName", "holds an API key; rename the key in Flowise")
    permissions, added = _permissions(row, catalog)
    spec = KeySpec(name=validate_name(row.key_name), workspace_id=validate_workspace_id(row.workspace_id),
                   permissions=permissions, description="imported from Flowise", metadata=IMPORTED_METADATA)
    return Importable(row.id, key_id(row.id), spec, digest(row.api_key), key_format.display(row.api_key), added)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` fit for a report line: without any key of the source (nor anything shaped like ours) in it.
    Names and ids come from Flowise's database and could hold a key."""
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return KEY_SHAPED.sub("[redacted]", text)


def flow_bindings(flows: Sequence[FlowiseFlow], keys: Sequence[Importable | Refused],
                  catalog: Catalog) -> list[FlowBinding | FlowLeft]:
    """Each flow restriction as a binding to make, or left to Flowise with the reason. Left means Flowise
    still refuses other keys on that flow itself (keep its restriction: never clear it)."""
    by_id = {key_id(k.source_id): k for k in keys}  # Flowise finds a key by id in any UUID spelling
    out: list[FlowBinding | FlowLeft] = []
    for flow in flows:
        key = by_id.get(key_id(flow.apikey_id))
        if key is None:
            out.append(FlowLeft(flow.id, "its apikeyid names no key in Flowise's apikey table"))
        elif isinstance(key, Refused):
            out.append(FlowLeft(flow.id, f"its key {key.source_id} is not imported"))
        elif (flow.workspace_id or "") != key.spec.workspace_id:
            out.append(FlowLeft(flow.id, "its key belongs to another workspace, so Flowise refuses every key on it"))
        else:
            try:
                resource = canonical_resource(catalog, f"chatflows/{flow.id}", "chat_flow.id")
            except InvalidArgument as exc:
                out.append(FlowLeft(flow.id, exc.message))
                continue
            out.append(FlowBinding(flow.id, flow.apikey_id, key.spec.workspace_id, resource, key.key_id))
    return out
