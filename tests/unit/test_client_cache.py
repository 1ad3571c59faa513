"""The client's DecisionCache as pure logic, on fake clocks: what it keeps, what each event drops, its bounds."""

from __future__ import annotations

from keygate.client.cache import SETTLE, DecisionCache, fold, question
from keygate.client.decision import Decision
from keygate.v1 import authz_pb2


class Clocks:
    def __init__(self) -> None:
        self.now, self.wall = 100.0, 1_000_000.0

    def pass_(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


def cache_on(clocks: Clocks, max_entries: int = 10, ttl: float = 5.0) -> DecisionCache:
    cache = DecisionCache(max_entries, ttl, clock=lambda: clocks.now, wall=lambda: clocks.wall)
    cache.apply(authz_pb2.ChangeEvent(kind=authz_pb2.RESYNC, listening=True))
    clocks.pass_(SETTLE + 0.1)
    return cache


def answer(key_id: str = "k1", **fields: object) -> tuple[authz_pb2.CheckResponse, Decision]:
    fields = {"allowed": True, "code": authz_pb2.OK, "http_status": 200, "workspace_id": "ws1", **fields}
    response = authz_pb2.CheckResponse(key_id=key_id, **fields)
    return response, Decision.from_response(response)


def keep(cache: DecisionCache, clocks: Clocks, resource: str = "chatflows/a", key_id: str = "k1",
         **fields: object) -> tuple[bytes, str, str, str, str]:
    asked = question(f"key-{key_id}", resource, "chatflows:view", "", "")
    cache.keep(asked, *answer(key_id, **fields), clocks.now)
    return asked


def test_each_event_drops_what_it_touches() -> None:
    clocks = Clocks()
    cache = cache_on(clocks)
    a, b = keep(cache, clocks, "Chatflows/AB-cd"), keep(cache, clocks, "chatflows/x", key_id="k2")
    cache.apply(authz_pb2.ChangeEvent(kind=authz_pb2.BINDING_CHANGED, workspace_id="ws1", resource="chatflows/abcd"))
    assert (cache.get(a), cache.get(b) is not None) == (None, True)
    cache.apply(authz_pb2.ChangeEvent(kind=authz_pb2.KEY_CHANGED, key_id="k2", workspace_id="ws1"))
    assert len(cache) == 0


def test_a_decision_asked_around_an_event_about_it_is_not_kept() -> None:
    clocks = Clocks()
    cache = cache_on(clocks)
    cache.apply(authz_pb2.ChangeEvent(kind=authz_pb2.KEY_CHANGED, key_id="k1"))
    clocks.pass_(SETTLE / 2)
    assert cache.get(keep(cache, clocks)) is None  # another replica may not have applied it yet
    assert cache.get(keep(cache, clocks, key_id="k2")) is not None
    clocks.pass_(SETTLE)
    assert cache.get(keep(cache, clocks)) is not None


def test_nothing_is_kept_while_not_live_and_a_resync_or_an_unknown_kind_clears_all() -> None:
    clocks = Clocks()
    cache = cache_on(clocks)
    keep(cache, clocks)
    cache.apply(authz_pb2.ChangeEvent(kind=99))  # a kind from a newer server
    assert (len(cache), cache.live) == (0, False)
    clocks.pass_(SETTLE + 1)
    assert cache.get(keep(cache, clocks)) is None


def test_limited_keys_unknown_keys_and_stateful_codes_are_never_kept() -> None:
    clocks = Clocks()
    cache = cache_on(clocks)
    keep(cache, clocks, limited=True)
    keep(cache, clocks, key_id="")
    keep(cache, clocks, key_id="k3", code=authz_pb2.RATE_LIMITED)
    assert len(cache) == 0


def test_ttl_key_end_and_size_bound_each_entry() -> None:
    clocks = Clocks()
    cache = cache_on(clocks, max_entries=2, ttl=5.0)
    asked = keep(cache, clocks)
    clocks.pass_(5.0)
    assert cache.get(asked) is None
    ending = authz_pb2.CheckResponse()
    ending.key_expire_time.FromMicroseconds(int((clocks.wall + 1) * 1e6))
    asked = keep(cache, clocks, key_expire_time=ending.key_expire_time)
    clocks.wall += 1  # the wall clock alone moves: expiry follows it
    assert cache.get(asked) is None
    for resource in ("chatflows/1", "chatflows/2", "chatflows/3"):
        keep(cache, clocks, resource)
    assert (len(cache), cache.evictions) == (2, 1)


def test_fold_makes_every_spelling_of_a_resource_one() -> None:
    assert fold("Chatflows/9B2C0E5C6D1F4A7B8C9D0E1F2A3B4C5D") == fold("chatflows/9b2c0e5c-6d1f-4a7b-8c9d-0e1f2a3b4c5d")
