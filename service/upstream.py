"""The upstream credential: the Flowise API key keygate puts on the requests it allowed.

Flowise's own middleware wants a Flowise API key on every `/api/v1` route it does not whitelist. keygate
strips the caller's key, so on an allowed request it sets `Authorization: Bearer <key>` with a key the
operator created once in Flowise, per keygate workspace, listed in a secret file
(`--upstream-credentials`/`KEYGATE_UPSTREAM_CREDENTIALS`):

    ws-acme: <the Flowise API key of Acme's Flowise workspace>
    "*": <the key for every other workspace>           # optional

The file is YAML (JSON is YAML too). It is re-read when it changes, as the TLS files are (a Kubernetes
secret volume swaps it in place): `watch` compares its identity (device, inode, size, times) once a second,
off the request path; a new version that does not load is refused with a warning and the one in use stays.
The keys are never logged, never in an error or exception: messages name the setting, the path and at most
a workspace id.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path

import structlog
import yaml

from .domain.errors import InvalidArgument

log = structlog.get_logger(__name__)

SETTING = "KEYGATE_UPSTREAM_CREDENTIALS"
DEFAULT = "*"  # the entry for any workspace not listed
WATCH_SECONDS = 1.0
# A header value Envoy passes unchanged: visible ASCII, no spaces (Flowise splits `Bearer <key>` on the space).
_KEY = re.compile(r"[!-~]+\Z")


def _identity(path: Path) -> tuple[int, ...]:
    try:
        s = os.stat(path)
    except OSError as exc:
        return (exc.errno or -1,)
    return (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


def _load(path: Path) -> dict[str, str]:
    """workspace id -> the `Authorization` value to send; InvalidArgument naming the setting otherwise."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidArgument(SETTING, f"cannot read {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise InvalidArgument(SETTING, f"{path} is not YAML or JSON") from None  # the parser's message quotes it
    if not isinstance(data, Mapping) or not data:
        raise InvalidArgument(SETTING, f"{path} must map workspace ids (or \"*\") to Flowise API keys")
    out: dict[str, str] = {}
    for workspace, key in data.items():
        if not isinstance(workspace, str) or not workspace:
            raise InvalidArgument(SETTING, f"{path}: every workspace id must be a non-empty string")
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidArgument(SETTING, f"{path}: the key of workspace {workspace!r} must be one word of "
                                           "visible ASCII characters")
        out[workspace] = f"Bearer {key}"
    return out


class UpstreamCredentials:
    """The credential for each workspace, as the Authorization header value. `for_workspace` is one dict
    lookup: the Envoy servicer calls it on every allowed request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity = _identity(path)
        self._by_workspace = _load(path)
        self._refused: tuple[int, ...] | None = None  # a version warned about once

    def __repr__(self) -> str:  # never the keys, should this object reach a log line or a traceback
        return f"UpstreamCredentials({str(self.path)!r}, {len(self._by_workspace)} entries)"

    def for_workspace(self, workspace_id: str) -> str | None:
        """`Bearer <key>` for this workspace (or the `*` entry); None if neither is configured."""
        by_workspace = self._by_workspace
        return by_workspace.get(workspace_id) or by_workspace.get(DEFAULT)

    def refresh(self) -> None:
        """Re-read the file if it changed; keep the credentials in use if the new version does not load."""
        identity = _identity(self.path)
        if identity in (self._identity, self._refused):
            return
        try:
            loaded = _load(self.path)
        except InvalidArgument as exc:
            self._refused = identity
            log.warning("upstream_credentials_refused", error=exc.message, keeping="the credentials in use")
            return
        self._identity, self._by_workspace = identity, loaded
        log.info("upstream_credentials_reloaded", path=str(self.path), entries=len(loaded))

    async def watch(self) -> None:
        """Follow the file until cancelled."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            self.refresh()
