"""The change feed's fan-out: who gets which event, a slow subscriber ended, a closed feed."""

from __future__ import annotations

from uuid import uuid4

import pytest

from keygate.cache.feed import BindingEvent, Ended, Feed, KeyEvent, Resync
from keygate.domain import changes


async def test_each_subscriber_gets_the_events_of_its_workspace_and_a_global_one_all() -> None:
    feed = Feed()
    feed.resync(listening=True)
    everything, ws1 = feed.subscribe(None), feed.subscribe("ws1")
    mine, theirs = uuid4(), uuid4()
    feed.publish(changes.KeyChanged(theirs, (b"fp",), workspace_id="ws2"))
    feed.publish(changes.BindingChanged("ws2", "chatflows/x"))
    feed.publish(changes.KeyChanged(mine, workspace_id="ws1"))
    assert [await ws1.next() for _ in range(2)] == [Resync(True), KeyEvent(mine, "ws1")]
    assert [await everything.next() for _ in range(4)] == [
        Resync(True), KeyEvent(theirs, "ws2"), BindingEvent("ws2", "chatflows/x"), KeyEvent(mine, "ws1")]


async def test_a_key_event_without_a_workspace_is_a_resync_for_a_workspace_subscriber() -> None:
    feed = Feed()
    ws1, everything = feed.subscribe("ws1"), feed.subscribe(None)
    key_id = uuid4()
    feed.publish(changes.KeyChanged(key_id))  # from a writer that does not name the workspace
    assert [await ws1.next() for _ in range(2)] == [Resync(False), Resync(False)]
    assert [await everything.next() for _ in range(2)] == [Resync(False), KeyEvent(key_id, "")]


async def test_a_subscriber_past_its_queue_is_ended_as_slow_and_dropped() -> None:
    feed = Feed(queue_size=3)
    slow = feed.subscribe(None)
    for _ in range(3):
        feed.publish(changes.BindingChanged("ws1", "chatflows/x"))
    assert len(feed) == 0
    with pytest.raises(Ended) as ended:
        await slow.next()
    assert ended.value.slow


async def test_a_closed_feed_ends_its_subscribers_and_refuses_new_ones() -> None:
    feed = Feed()
    subscriber = feed.subscribe(None)
    await subscriber.next()
    feed.close()
    with pytest.raises(Ended) as ended:
        await subscriber.next()
    assert not ended.value.slow
    with pytest.raises(Ended):
        feed.subscribe(None)
