"""A property of the WatchChanges path, from a NOTIFY payload to the bytes on the wire: whatever a change
carries (fingerprints of new secrets derived from key digests), no event carries any of it."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from keygate.api.watch import to_message
from keygate.cache.feed import Feed, Resync
from keygate.domain import changes
from keygate.domain.keys import fingerprint

digests = st.binary(min_size=32, max_size=32)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
key_changes = st.builds(
    lambda key_id, found, removed, workspace: changes.KeyChanged(
        key_id, tuple(fingerprint(d) for d in found), removed, workspace),
    st.uuids(), st.lists(digests, max_size=3), st.booleans(), st.none() | names)
binding_changes = st.builds(changes.BindingChanged, names, names.map(lambda r: f"chatflows/{r}"))


@settings(deadline=None)  # a loaded machine must not fail a property about bytes
@given(st.lists(key_changes | binding_changes, min_size=1, max_size=8), st.none() | names)
def test_no_event_carries_what_a_change_derives_from_a_key(sent: list[changes.Change], workspace: str | None) -> None:
    async def wire() -> bytes:
        feed = Feed()
        feed.resync(listening=True)
        subscriber = feed.subscribe(workspace)
        for change in sent:  # as KeyCache.apply_payload hands them on: decoded from the NOTIFY payload
            feed.publish(changes.decode(changes.encode(change, time.time()))[0])
        feed.resync(listening=False)  # the last event every subscriber gets: read up to it
        events = [await subscriber.next()]
        while events[-1] != Resync(False):
            events.append(await subscriber.next())
        return b"".join(to_message(e, workspace).SerializeToString() for e in events)

    out = asyncio.run(wire())
    for change in sent:
        if isinstance(change, changes.KeyChanged):
            for secret in change.new_fingerprints:
                assert secret not in out and secret.hex().encode() not in out
