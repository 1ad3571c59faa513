"""keygate.client.asgi's Route templates and the Bearer credential both middlewares read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.client.asgi import Route
from keygate.client.bearer import bearer_key


def test_a_template_matches_one_segment_per_parameter() -> None:
    route = Route("/flows/{flow}/runs/{run}", "chatflows:view", resource="chatflows/{flow}")
    assert route.match("GET", "/flows/a/runs/7") == {"flow": "a", "run": "7"}
    assert route.match("GET", "/flows/a/b/runs/7") is None and route.match("GET", "/flows/a/runs/7/x") is None
    assert Route("/a.b", None).match("GET", "/axb") is None  # literals are literal


def test_methods_narrow_a_route() -> None:
    route = Route("/flows", "chatflows:create", methods=frozenset({"post"}))
    assert route.match("POST", "/flows") == {} and route.match("GET", "/flows") is None


def test_a_resource_naming_a_parameter_the_path_lacks_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="flow"):
        Route("/flows/{id}", "chatflows:view", resource="chatflows/{flow}")


@given(st.text(alphabet=st.characters(blacklist_characters="/"), min_size=1))
def test_any_segment_fills_the_parameter_verbatim(segment: str) -> None:
    assert Route("/flows/{flow}", "chatflows:view").match("GET", f"/flows/{segment}") == {"flow": segment}


def test_bearer_is_the_only_scheme() -> None:
    assert bearer_key("Bearer abc") == "abc" and bearer_key("bearer  abc ") == "abc"
    assert bearer_key("Basic abc") == "" and bearer_key("abc") == "" and bearer_key("") == ""
