"""`keygate import flowise`: an existing Flowise's API keys and flow restrictions moved into keygate.

Read Flowise's database, examine every key (domain/flowise.py), then in ONE keygate transaction store
the keys and bindings that are new, with an audit row each and one for the run. A key or binding
already in keygate is left as it is, so a second import changes nothing (and writes no audit row).
Flowise is changed only when asked (`clear_bindings`), after keygate has committed, and only for flows
now bound in keygate: a flow whose restriction is not carried over keeps Flowise's own.

The report holds ids, names and workspaces, never a key; its lines are scrubbed of every key the source
holds besides, since names come from Flowise and could hold one.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .admin import set_fields
from .domain.flowise import (
    FLOW_KEY_ACTIONS,
    FlowBinding,
    FlowiseFlow,
    FlowiseKey,
    FlowLeft,
    Importable,
    Refused,
    examine,
    flow_bindings,
    scrub,
    secret_matches,
)
from .domain.keys import FOREIGN_MIN_LEN, KeyFormat
from .domain.permissions import Catalog
from .domain.records import AuditEvent
from .store.flowise import FlowiseSource
from .store.interface import AdminStore, Reads, Writes

RUN_ACTION, KEY_ACTION, BINDING_ACTION = "ImportFlowise", "ImportKey", "ImportBinding"


@dataclass
class Report:
    """What an import did (or, dry, would do)."""

    source: str
    dry_run: bool
    imported: list[Importable] = field(default_factory=list)
    present: list[Importable] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    bound: list[FlowBinding] = field(default_factory=list)
    bound_before: list[FlowBinding] = field(default_factory=list)
    left: list[FlowLeft] = field(default_factory=list)
    cleared: int | None = None  # rows of chat_flow cleared; None: not asked
    run_id: str = ""  # the request_id of the run's audit rows
    _secrets: tuple[str, ...] = field(default=(), repr=False)

    def clean(self, text: str) -> str:
        """`text` without any key of the source in it."""
        return scrub(text, self._secrets)

    @property
    def complete(self) -> bool:
        """Did every key and every flow restriction end up in keygate?"""
        return not self.refused and not self.left

    @property
    def changed(self) -> bool:
        return bool(self.imported or self.bound)

    def summary(self) -> str:
        would = "would be " if self.dry_run else ""
        return (f"keys: {len(self.imported)} {would}imported, {len(self.present)} already in keygate, "
                f"{len(self.refused)} refused; flow restrictions: {len(self.bound)} {would}bound, "
                f"{len(self.bound_before)} already bound, {len(self.left)} left to Flowise")

    def lines(self) -> Iterator[str]:
        """The report as printed: one line per key and per flow restriction, then what it came to."""
        mode = " (dry run: nothing written)" if self.dry_run else ""
        yield from map(self.clean, self._lines(mode))

    def _lines(self, mode: str) -> Iterator[str]:
        verb = "would import" if self.dry_run else "imported"
        yield f"flowise import from {self.source}{mode}"
        for key in self.imported:
            added = f" (+{', '.join(key.added)}: Flowise never checks it)" if key.added else ""
            yield f"key {key.key_id} {key.spec.name!r} workspace {key.spec.workspace_id}: {verb}{added}"
        for key in self.present:
            yield f"key {key.key_id} {key.spec.name!r} workspace {key.spec.workspace_id}: already in keygate"
        for refused in self.refused:
            yield (f"key {refused.source_id} {refused.name!r} workspace {refused.workspace_id or '-'}: "
                   f"REFUSED: {refused.reason}")
        bind = "would bind" if self.dry_run else "bound"
        for binding in self.bound:
            yield f"flow {binding.flow_id}: {bind} {binding.resource} to key {binding.key_id}"
        for binding in self.bound_before:
            yield f"flow {binding.flow_id}: {binding.resource} already bound to key {binding.key_id}"
        for left in self.left:
            yield f"flow {left.flow_id}: LEFT TO FLOWISE: {left.reason}"
        yield self.summary()
        yield self._flowise_line()

    def _flowise_line(self) -> str:
        flows = len(self.bound) + len(self.bound_before)
        if self.cleared is None:
            return (f"Flowise unchanged: {flows} flow(s) bound in keygate keep Flowise's own apikeyid; "
                    "--clear-flowise-bindings clears it")
        if self.dry_run:
            return f"Flowise: would clear apikeyid on {flows} flow(s) bound in keygate"
        return f"Flowise: cleared apikeyid on {self.cleared} flow(s) bound in keygate"


async def import_flowise(store: AdminStore, source: FlowiseSource, catalog: Catalog, key_format: KeyFormat, *,
                         dry_run: bool = False, clear_bindings: bool = False) -> Report:
    """Import; with `dry_run`, read both databases and write to neither."""
    data = await source.read()
    examined = examine(data.keys, await _verify(data.keys), catalog, key_format)
    report = Report(source.describe(), dry_run,
                    _secrets=tuple(k.api_key for k in data.keys if len(k.api_key) >= FOREIGN_MIN_LEN))
    if dry_run:
        async with store.read() as tx:
            await _sort(tx, report, examined, data.flows, catalog)
    else:
        async with store.transaction() as tx:
            await tx.lock_imports()
            await _sort(tx, report, examined, data.flows, catalog)
            if report.changed:
                await _write(tx, report)
    if clear_bindings:
        flows = [(b.flow_id, b.apikey_id) for b in (*report.bound, *report.bound_before)]
        report.cleared = len(flows) if dry_run else await source.clear(flows)
    return report


async def _verify(keys: list[FlowiseKey]) -> list[bool]:
    """Flowise's apiSecret check for every key, on every core: scrypt costs about 0.1 s a key, and
    hashlib releases the GIL while it runs."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(await asyncio.gather(*(loop.run_in_executor(pool, secret_matches, k.api_key, k.api_secret)
                                           for k in keys)))


async def _sort(tx: Reads, report: Report, examined: list[Importable | Refused], flows: list[FlowiseFlow],
                catalog: Catalog) -> None:
    """File each key and flow restriction as new, already present or refused, against keygate's data."""
    candidates = [k for k in examined if isinstance(k, Importable)]
    owners = await tx.secret_owners([k.digest for k in candidates])
    existing = await tx.existing_keys([k.key_id for k in candidates])
    for key in examined:
        if isinstance(key, Refused):
            report.refused.append(key)
        elif owners.get(key.digest) == key.key_id:
            report.present.append(key)
        elif key.digest in owners:
            report.refused.append(_refuse(key, "keygate already holds this key under another id"))
        elif key.key_id in existing:
            report.refused.append(_refuse(key, f"keygate already has a key {key.key_id} with another secret"))
        else:
            report.imported.append(key)
    kept = [*report.imported, *report.present]
    bound = await tx.bindings_of_keys([k.key_id for k in report.present])
    for item in flow_bindings(flows, [*kept, *report.refused], catalog):
        if isinstance(item, FlowLeft):
            report.left.append(item)
        elif (item.workspace_id, item.resource, item.key_id) in bound:
            report.bound_before.append(item)
        else:
            report.bound.append(item)


def _refuse(key: Importable, reason: str) -> Refused:
    return Refused(key.source_id, key.spec.name, key.spec.workspace_id, reason)


async def _write(tx: Writes, report: Report) -> None:
    """The new keys and bindings, each with its audit row, and the run's row. The actor is the import
    (no key): audit rows name it by their action and share the run's request id."""
    report.run_id = f"flowise-import-{uuid.uuid4()}"
    for key in report.imported:
        await tx.insert_key(key.key_id, key.spec, key.digest, key.display, None)
        await tx.audit(AuditEvent(action=KEY_ACTION, outcome="OK", workspace_id=key.spec.workspace_id,
                                  target_key_id=key.key_id, request_id=report.run_id,
                                  changed_fields=(*set_fields(key.spec), "secret"),
                                  reason=report.clean(f"Flowise key {key.source_id}")))
    for binding in report.bound:
        await tx.upsert_binding(binding.workspace_id, binding.resource, binding.key_id, FLOW_KEY_ACTIONS, None)
        await tx.audit(AuditEvent(action=BINDING_ACTION, outcome="OK", workspace_id=binding.workspace_id,
                                  target_key_id=binding.key_id, resource=binding.resource,
                                  changed_fields=("bindings",), request_id=report.run_id,
                                  reason=report.clean(f"Flowise chat_flow.apikeyid of flow {binding.flow_id}")))
    await tx.audit(AuditEvent(action=RUN_ACTION, outcome="OK", workspace_id="", request_id=report.run_id,
                              reason=report.clean(f"from {report.source}: {report.summary()}")))
