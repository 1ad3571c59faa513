"""The NOTIFY payload of a change: a key change names the key's workspace, and a payload from a writer
that did not (an older replica) still reads, its workspace unknown."""

from __future__ import annotations

from uuid import uuid4

from keygate.domain import changes


def test_a_key_change_carries_its_workspace_through_the_payload() -> None:
    change = changes.KeyChanged(uuid4(), (b"\x01" * 16,), True, "ws1")
    assert changes.decode(changes.encode(change, 5.0)) == (change, 5.0)
    root = changes.KeyChanged(uuid4(), workspace_id="")
    assert changes.decode(changes.encode(root, 5.0))[0].workspace_id == ""  # type: ignore[union-attr]


def test_an_older_writers_key_change_reads_without_a_workspace() -> None:
    key_id = uuid4()
    assert changes.decode(f'{{"k":"{key_id}","t":1.0}}') == (changes.KeyChanged(key_id), 1.0)
