"""Route rules for the mesh door: matching, templates, and refusing bad rule files."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.config import Settings
from keygate.domain.errors import InvalidArgument
from keygate.domain.permissions import Catalog
from keygate.domain.routes import MEMO_PATH_LEN, RouteTable

CATALOG = Catalog.build()
FLOWISE = Settings().routes(CATALOG)


@pytest.mark.parametrize(
    ("method", "path", "resource", "action", "query_key"),
    [
        ("POST", "/api/v1/prediction/3f2a", "chatflows/3f2a", "predictions:create", True),
        ("POST", "/api/v1/prediction/3f2a/", "chatflows/3f2a", "predictions:create", True),
        ("GET", "/api/v1/chatflows", "", "chatflows:view", False),
        ("GET", "/api/v1/chatflows/abc", "chatflows/abc", "chatflows:view", False),
        ("DELETE", "/api/v1/chatflows/abc", "chatflows/abc", "chatflows:delete", False),
        ("PUT", "/api/v1/chatflows/a1", "chatflows/a1", "chatflows:update", False),
        ("POST", "/api/v1/vector/upsert/a1", "chatflows/a1", "predictions:create", False),
        ("GET", "/api/v1/document-store/chunks/s1/l1/2", "documentStores/s1", "documentStores:view", False),
    ],
)
def test_the_built_in_flowise_rules(method: str, path: str, resource: str, action: str, query_key: bool) -> None:
    match = FLOWISE.match(method, path)
    assert match is not None
    assert (match.resource, match.route.action, match.route.query_key) == (resource, action, query_key)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/prediction/3f2a"),  # wrong method
        ("POST", "/api/v1/prediction/a/b"),  # a variable never spans a '/'
        ("GET", "/api/v1/chatflowsX"),
        ("GET", "/other"),
        ("GET", "/api/v1/ping/x"),
    ],
)
def test_requests_no_rule_covers_do_not_match(method: str, path: str) -> None:
    assert FLOWISE.match(method, path) is None
    assert not FLOWISE.allow_unmatched  # and are therefore denied by default


def tools_table(*rules: tuple[str, str]) -> RouteTable:
    """A table of (method, action) rules, all for `/x/{id}` -> `tools/{id}`, in this order."""
    return RouteTable.parse({"routes": [{"method": method, "path": "/x/{id}", "resource": "tools/{id}",
                                         "action": action} for method, action in rules]}, CATALOG)


def test_first_matching_rule_wins_and_wildcard_methods_match_any() -> None:
    table = tools_table(("GET", "tools:view"), ("*", "tools:update"))
    assert table.match("GET", "/x/1").route.action == "tools:view"
    assert table.match("PATCH", "/x/1").route.action == "tools:update"


def test_key_sources_and_unmatched_policy_are_configurable() -> None:
    table = RouteTable.parse({
        "key": {"header": "X-Flowise-Key", "query_parameter": "key"},
        "unmatched": "allow",
        "workspace_header": "X-Workspace",
        "routes": [{"method": "GET", "path": "/a", "action": "tools:view"}],
    }, CATALOG)
    assert (table.key_header, table.query_parameter, table.allow_unmatched, table.workspace_header) == (
        "x-flowise-key", "key", True, "x-workspace")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"routes": []}, "routes"),
        ({"unmatched": "maybe", "routes": [{"method": "GET", "path": "/a", "action": "tools:view"}]}, "unmatched"),
        ({"routes": ["GET /a"]}, "routes[0]"),
        ({"routes": [{"method": "FETCH", "path": "/a", "action": "tools:view"}]}, "routes[0].method"),
        ({"routes": [{"method": "GET", "path": "a", "action": "tools:view"}]}, "routes[0].path"),
        ({"routes": [{"method": "GET", "path": "/a", "action": "tools:fly"}]}, "routes[0].action"),
        ({"routes": [{"method": "GET", "path": "/a", "action": "tools:*"}]}, "routes[0].action"),
        ({"routes": [{"method": "GET", "path": "/a/{id}", "resource": "tools/{other}", "action": "tools:view"}]},
         "routes[0].resource"),
        ({"routes": [{"method": "GET", "path": "/a/{id}", "resource": "tools/*/{id}", "action": "tools:view"}]},
         "routes[0].resource"),
    ],
)
def test_bad_rule_files_name_the_entry(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        RouteTable.parse(data, CATALOG)
    assert info.value.field == field


def test_an_unreadable_routes_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text("routes: [{method: GET, path: /a, action: nope:view}]")
    with pytest.raises(InvalidArgument) as info:
        Settings(routes_file=bad).routes(CATALOG)
    assert str(bad) in info.value.message and "routes[0].action" in info.value.message


@pytest.mark.parametrize(
    ("method", "path", "resource"),
    [
        ("POST", "/API/V1/Prediction/3f2a", "chatflows/3f2a"),  # Flowise's router matches paths case-blind
        ("post", "/api/v1/prediction/3f2a", "chatflows/3f2a"),
        ("GET", "/Api/V1/ChatFlows", ""),
    ],
)
def test_paths_match_case_blind_like_flowise(method: str, path: str, resource: str) -> None:
    match = FLOWISE.match(method.upper(), path)
    assert match is not None and match.resource == resource


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"method": "GET", "path": "/x/{id}", "resource": "nosuch/{id}", "action": "chatflows:view"},
         "routes[0].resource"),
        ({"method": "GET", "path": "/x/{id}", "resource": "agentflows/{id}", "action": "chatflows:view"},
         "routes[0].resource"),
        ({"method": "GET", "path": "/x/{c}/{id}", "resource": "{c}/{id}", "action": "chatflows:view"},
         "routes[0].resource"),  # the collection must be literal
    ],
)
def test_a_rule_names_a_collection_its_action_acts_on(rule: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        RouteTable.parse({"routes": [rule]}, CATALOG)
    assert err.value.field == field


def test_a_rule_is_written_in_the_catalogs_spelling() -> None:
    table = RouteTable.parse({"routes": [{"method": "GET", "path": "/ds/{id}", "resource": "DocumentStores/{id}",
                                          "action": "documentStores:view"}]}, CATALOG)
    assert table.match("GET", "/ds/1") == table.match("GET", "/DS/1")
    assert table.routes[0].resource == "documentStores/{id}"


def test_public_and_refused_rules_take_no_action() -> None:
    table = RouteTable.parse({"routes": [
        {"method": "GET", "path": "/ping", "access": "public"},
        {"method": "GET", "path": "/verify/{key}", "access": "refused"},
    ]}, CATALOG)
    assert [(r.access, r.action) for r in table.routes] == [("public", ""), ("refused", "")]
    for rule, field in (({"access": "open"}, "routes[0].access"),
                        ({"access": "public", "action": "tools:view"}, "routes[0].access"),
                        ({"access": "refused", "query_key": True}, "routes[0].access")):
        with pytest.raises(InvalidArgument) as err:
            RouteTable.parse({"routes": [{"method": "GET", "path": "/x", **rule}]}, CATALOG)
        assert err.value.field == field


def test_the_upstream_sessions_marker_is_read_case_blind_and_checked() -> None:
    rules = [{"method": "GET", "path": "/x", "action": "chatflows:view"}]
    table = RouteTable.parse({"routes": rules, "upstream_session": {"header": "X-Request-From", "value": "Internal"}},
                             CATALOG)
    assert table.session_call({"x-request-from": " internal "})
    assert not table.session_call({"x-request-from": "external"}) and not table.session_call({})
    assert not RouteTable.parse({"routes": rules}, CATALOG).session_call({"x-request-from": "internal"})
    with pytest.raises(InvalidArgument) as err:
        RouteTable.parse({"routes": rules, "upstream_session": {"header": "x-request-from"}}, CATALOG)
    assert err.value.field == "upstream_session"


def test_the_built_in_rules_know_flowises_ui_marker() -> None:
    assert Settings().routes(CATALOG).session_call({"x-request-from": "internal"})


@given(st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       st.lists(st.sampled_from(["api", "v1", "prediction", "chatflows", "x", "A%2F", ""]), max_size=6),
       st.integers(min_value=0, max_value=3 * MEMO_PATH_LEN))
def test_memoized_and_long_paths_match_exactly_as_the_rules_do(method: str, parts: list[str], pad: int) -> None:
    """The memo is an optimisation only: every path, remembered or too long to be, gets the first rule's answer."""
    path = "/" + "/".join(parts) + "/" + "i" * pad
    first = next((m for r in FLOWISE.routes if (m := r.resolve(method, path)) is not None), None)
    found = FLOWISE.match(method, path)
    assert (found.resource if found else None) == first
    assert FLOWISE.match(method, path) == found  # asked again (from the memo when short enough)


def test_head_is_matched_by_the_get_rule_unless_a_head_rule_comes_first() -> None:
    """Express answers HEAD with a GET route: keygate asks for the same permission, never refuses it unmatched."""
    match = FLOWISE.match("HEAD", "/api/v1/chatflows/abc")
    assert match is not None and (match.resource, match.route.action) == ("chatflows/abc", "chatflows:view")
    table = tools_table(("HEAD", "tools:view"), ("GET", "tools:update"))
    assert table.match("HEAD", "/x/1").route.action == "tools:view"
    assert table.match("GET", "/x/1").route.action == "tools:update"
    assert FLOWISE.match("HEAD", "/api/v1/prediction/abc") is None  # a POST rule does not cover HEAD
