"""What a committed mutation tells every replica's cache, and its wire form (a NOTIFY payload).

Payloads carry ids, workspace and resource names, and filter fingerprints of new secrets:
never a key or a digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from uuid import UUID

CHANNEL = "keygate_changes"


@dataclass(frozen=True, slots=True)
class KeyChanged:
    """The key's record or secrets changed: drop every cached credential of it."""

    key_id: UUID
    new_fingerprints: tuple[bytes, ...] = ()  # secrets that now exist (create, rotate)
    bindings_removed: bool = False  # deleted: its bindings went with it
    workspace_id: str | None = None  # the key's ("" for root); None from a writer that did not say


@dataclass(frozen=True, slots=True)
class BindingChanged:
    workspace_id: str
    resource: str


Change = KeyChanged | BindingChanged


def encode(change: Change, sent: float) -> str:
    """`sent`: the writer's wall clock (time.time()), from which readers measure how long the change took."""
    if isinstance(change, KeyChanged):
        data: dict[str, object] = {"k": str(change.key_id)}
        if change.new_fingerprints:
            data["f"] = [f.hex() for f in change.new_fingerprints]
        if change.bindings_removed:
            data["b"] = 1
        if change.workspace_id is not None:
            data["w"] = change.workspace_id  # read only beside "k": older readers ignore it
    else:
        data = {"w": change.workspace_id, "r": change.resource}
    data["t"] = round(sent, 6)
    return json.dumps(data, separators=(",", ":"))


def decode(payload: str) -> tuple[Change, float | None]:
    """The change in `payload` and when it was sent (None from a writer that did not say); ValueError if
    it is not one (the cache then clears itself)."""
    data = json.loads(payload)
    sent = data.get("t")
    sent = float(sent) if isinstance(sent, int | float) else None
    if "k" in data:
        workspace = data.get("w")
        key = KeyChanged(UUID(data["k"]), tuple(bytes.fromhex(f) for f in data.get("f", ())), bool(data.get("b")),
                         workspace if isinstance(workspace, str) else None)
        return key, sent
    if "w" in data and "r" in data:
        return BindingChanged(str(data["w"]), str(data["r"])), sent
    raise ValueError("not a keygate change")
