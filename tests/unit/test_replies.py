"""keygate.api.replies: replies kept by the identity of the Decision they render."""

from __future__ import annotations

from keygate.api.replies import Rendered, Replies
from keygate.domain.decision import Code, Decision


def _decision() -> Decision:
    return Decision(Code.PERMISSION_DENIED, "a refusal")


def test_a_reply_is_found_by_its_decision_object_not_an_equal_one() -> None:
    replies: Replies[Rendered] = Replies()
    decision, equal = _decision(), _decision()
    kept = replies.keep(Rendered(decision, b"bytes"))
    assert decision == equal and decision is not equal
    assert replies.get(id(decision)) is kept
    assert replies.get(id(equal)) is None


def test_an_entry_holds_its_decision_so_its_id_cannot_be_reused() -> None:
    replies: Replies[Rendered] = Replies()
    replies.keep(Rendered(_decision(), b"bytes"))  # the caller keeps no reference
    (held,) = replies.values()
    assert replies.get(id(held.decision)) is held  # the Decision is alive: no other object has its id


def test_a_full_table_starts_again_and_never_grows_past_its_limit() -> None:
    replies: Replies[Rendered] = Replies(limit=3)
    decisions = [_decision() for _ in range(7)]
    for n, decision in enumerate(decisions, 1):
        replies.keep(Rendered(decision, b"%d" % n))
        assert len(replies) <= 3
    assert list(replies.values())[-1].decision is decisions[-1]  # the newest is always kept
    assert len(replies) == 1  # cleared at the 7th: 3 + 3, then one
