"""The flood guard: a filter of every known key, and a budget for looking up keys it does not know.

When the filter says a key does not exist, the database still confirms it, within a budget of
`rate` lookups a second; beyond it (a flood of made-up keys) the filter's "not found" answers
alone. The filter can lag a key created on another replica a moment ago by the time its NOTIFY
takes, so it is a load shedder, not the first answer. It answers only while complete: loaded while
the change listener is up, and fed every new secret's fingerprint since.

It keeps answering while the listener's trust has lapsed but its connection holds (a ping answered
late because this process did not run): a lapse makes cached grants unsafe, as a revocation may be
unheard, but the filter only ever refuses, so the worst it can do is refuse a key created in those
moments, as during any NOTIFY lag. A listener whose ping goes unanswered ends its connection, and
with it the filter (`forget`), within its bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from ..domain.keys import fingerprint
from ..store.interface import KeySource
from .budget import Budget
from .known import KnownDigests

log = structlog.get_logger(__name__)


class Flood:
    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._confirmations = Budget(rate, max(rate, 1.0), clock())
        self.known: KnownDigests | None = None  # consulted only while complete
        self._building: list[bytes] | None = None  # fingerprints heard while a filter loads

    def unknown(self, digest: bytes) -> bool:
        """The complete filter says no such key exists."""
        return self.known is not None and fingerprint(digest) not in self.known

    def refuses(self, digest: bytes) -> bool:
        """The complete filter says no such key, and this second's lookups of such keys are spent.
        Synchronous, so a burst arriving in one loop iteration is counted as it arrives."""
        return self.unknown(digest) and not self._confirmations.take(self._clock())

    def heard(self, fingerprints: Iterable[bytes]) -> None:
        """New secrets were stored: the filter (and one being loaded) must know them."""
        for f in fingerprints:
            if self.known is not None:
                self.known.add(f)
            if self._building is not None:
                self._building.append(f)

    def forget(self) -> None:
        """The listener is down: new secrets may go unheard, so the filter is incomplete."""
        self.known = None

    async def rebuild(self, source: KeySource) -> None:
        """Load every stored digest into a new filter, then swap it in. Must run while listening."""
        self._building = []
        try:
            async with source.read() as scan:
                count = await scan.count_digests()
                known = KnownDigests(2 * count)
                async for batch in scan.digests():
                    for digest in batch:
                        known.add(fingerprint(digest))
                    await asyncio.sleep(0)  # a million keys must not stall Checks
            for f in self._building:
                known.add(f)
            self.known = known
        finally:
            self._building = None
        log.info("known_keys_loaded", keys=known.count)

    @property
    def overfull(self) -> bool:
        return self.known is not None and self.known.overfull
