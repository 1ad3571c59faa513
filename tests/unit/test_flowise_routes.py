"""The built-in route rules against every route of Flowise 3.1.4 (tests/fixtures/flowise-3.1.4-routes.txt).

A request is served by the first Flowise route that matches it (Express), and decided by the first keygate
rule that matches it; for each listed route's request both are compared: a rule must exist, a route
Flowise serves without a key is public in keygate unless listed below, and a rule for a route Flowise
guards with permissions demands one of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from keygate.config import Settings
from keygate.domain.routes import KEY, PUBLIC, REFUSED, Route
from tests.flowise_routes_extract import FIXTURE, FlowiseRoute, compare, load

CATALOG = Settings().catalog()
RULES = Settings().routes(CATALOG)
ROUTES = load()
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Flowise serves these without a key; keygate does not (the README's route rules say why).
KEYED_THOUGH_FLOWISE_IS_OPEN = ("/api/v1/prediction", "/api/v1/webhook/")
# /api/v1/apikey is keygate's own (the transcoder door); passed on it would manage Flowise's plaintext keys.
REFUSED_PATHS = ("/api/v1/verify/apikey", "/api/v1/chatflows/apikey/", "/api/v1/mcp/", "/api/v1/apikey")


def sample(path: str) -> str:
    """A concrete request path for a template: each variable becomes `v-<name>`."""
    return re.sub(r"\{(\w+)\}", r"v-\1", path)


def requests() -> list[tuple[str, str]]:
    """Every (method, path) a listed route serves; a route for any method as each common method."""
    return [(method, sample(route.path)) for route in ROUTES
            for method in (METHODS if route.method == "*" else (route.method,))]


def served_by(method: str, path: str) -> FlowiseRoute:
    """The Flowise route Express hands this request to: the first registered that matches."""
    for route in ROUTES:
        if Route(route.method, route.path, "x:y").resolve(method, path) is not None:
            return route
    raise AssertionError(f"no listed route serves {method} {path}")


def test_the_fixture_lists_flowise_3_1_4s_api() -> None:
    assert FIXTURE.name == "flowise-3.1.4-routes.txt"
    assert len(ROUTES) > 300 and all(route.path.startswith("/api/v1/") for route in ROUTES)
    assert FlowiseRoute("GET", "/api/v1/ping", "public", ()) in ROUTES


@pytest.mark.parametrize(("method", "path"), requests())
def test_every_flowise_route_has_a_rule(method: str, path: str) -> None:
    match = RULES.match(method, path)
    assert match is not None, f"no rule covers {method} {path}"
    flowise = served_by(method, path)
    rule = match.route
    if flowise.path.startswith(REFUSED_PATHS):
        assert rule.access == REFUSED
    elif flowise.access == "public" and not flowise.path.startswith(KEYED_THOUGH_FLOWISE_IS_OPEN):
        assert rule.access == PUBLIC, f"Flowise serves {method} {path} without a key; keygate must too"
    elif flowise.access == "session":
        assert rule.access == PUBLIC  # Flowise's own session check decides; keygate adds no credential
    elif flowise.permissions:
        assert rule.access == KEY and rule.action in flowise.permissions, (
            f"{method} {path}: keygate asks {rule.action!r}, Flowise accepts {flowise.permissions}")
    else:
        assert rule.access in (KEY, PUBLIC)


def test_flowise_permissions_are_all_in_the_catalog() -> None:
    used = {permission for route in ROUTES for permission in route.permissions}
    assert used <= set(CATALOG.permissions())


def test_query_keys_only_on_routes_that_run_a_flow() -> None:
    assert {route.path for route in RULES.routes if route.query_key} == {
        "/api/v1/prediction", "/api/v1/prediction/{id}", "/api/v1/webhook/{id}"}


def test_no_rule_is_for_a_route_flowise_does_not_have() -> None:
    listed = {(r.method, sample(r.path)) for r in ROUTES}
    for rule in RULES.routes:
        methods = METHODS if rule.method == "*" else (rule.method,)
        assert any((m, sample(rule.path)) in listed or ("*", sample(rule.path)) in listed for m in methods), rule


def test_the_list_is_what_the_installed_flowise_serves() -> None:
    """With FLOWISE_DIST set (node_modules/flowise/dist of an installed Flowise 3.1.4), re-extract and compare."""
    dist = os.environ.get("FLOWISE_DIST")
    if not dist:
        pytest.skip("FLOWISE_DIST not set: no installed Flowise to compare with")
    assert compare(Path(dist)) == []


@pytest.mark.parametrize("path", ["/", "/chatflows", "/assets/index-1a2b.js", "/canvas/abc", "/apikey"])
def test_flowises_web_ui_is_public(path: str) -> None:
    assert RULES.match("GET", path) is None and RULES.outside_api(path)


@pytest.mark.parametrize("path", ["/api/v1/tools", "/API/v1/tools", "/%61pi/v1/tools", "/%2561pi/v1/tools", "/api",
                                  "/Api/", "/%41PI/v1/x"])
def test_no_spelling_of_an_api_path_is_outside_the_api(path: str) -> None:
    assert not RULES.outside_api(path)


@pytest.mark.parametrize("path", ["/api/v1/prediction/f1", "/api/v1/chatflows"])
def test_cors_preflights_pass_and_nothing_else_does_by_method(path: str) -> None:
    assert RULES.public_without_rule("OPTIONS", path)
    assert not RULES.public_without_rule("GET", path) and not RULES.public_without_rule("HEAD", path)
