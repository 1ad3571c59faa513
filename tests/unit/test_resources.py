"""Resource names, scope patterns, and Scope.allows / Scope.covers."""

import pytest

from keygate.domain.errors import InvalidArgument
from keygate.domain.resources import Scope, validate_pattern, validate_resource

GOOD_RESOURCES = ["", "chatflows/abc", "chatflows", "documentStores/x/loaders/y",
                  "chatflows/3f2a6c1e-0b1d-4e2f-9a3b-1c2d3e4f5a6b", "a/b.c_d~e-f", "c/" + "x" * 254]
BAD_RESOURCES = ["/x", "x/", "a//b", "*", "chatflows/*", "chatflows/*/x", "chat flows/x", "chatflows/a b",
                 "chatflows/.hidden", "chatflows/..", "chatflows/a?b", "chatflows/é", "c/" + "x" * 255]


@pytest.mark.parametrize("resource", GOOD_RESOURCES)
def test_validate_resource_accepts(resource):
    assert validate_resource(resource) == resource


@pytest.mark.parametrize("resource", BAD_RESOURCES)
def test_validate_resource_rejects(resource):
    with pytest.raises(InvalidArgument) as err:
        validate_resource(resource, "items[0].resource")
    assert err.value.field == "items[0].resource"


@pytest.mark.parametrize("pattern", ["chatflows/abc", "chatflows/*", "chatflows", "documentStores/x/loaders/y",
                                     "documentStores/x/*", "c/" + "x" * 254])
def test_validate_pattern_accepts(pattern):
    assert validate_pattern(pattern, "resources[0]") == pattern


@pytest.mark.parametrize("pattern", ["", "*", "/*", "/x", "a//b", "chatflows/*/x", "chatflows/**", "chatflows/a*",
                                     "chat flows/*", "c/" + "x" * 255])
def test_validate_pattern_rejects(pattern):
    with pytest.raises(InvalidArgument) as err:
        validate_pattern(pattern, "resources[1]")
    assert err.value.field == "resources[1]"


@pytest.mark.parametrize("validate", [validate_resource, lambda r: validate_pattern(r, "resources[0]")])
def test_trailing_newline_rejected(validate):
    with pytest.raises(InvalidArgument):
        validate("chatflows/abc\n")


@pytest.mark.parametrize(
    ("patterns", "resource", "action", "allowed"),
    [
        ([], "anything/at/all", "chatflows:view", True),
        ([], "", "chatflows:create", True),
        (["chatflows/abc"], "chatflows/abc", "chatflows:view", True),
        (["chatflows/abc"], "chatflows/abc/messages/1", "chatflows:view", True),
        (["chatflows/abc"], "chatflows/abcd", "chatflows:view", False),
        (["chatflows/abc"], "chatflows/ab", "chatflows:view", False),
        (["chatflows/abc"], "chatflows", "chatflows:view", False),
        (["chatflows/abc"], "agentflows/abc", "agentflows:view", False),
        (["chatflows/abc"], "chatflows/abc", "predictions:create", True),
        (["chatflows/*"], "chatflows/anything", "chatflows:view", True),
        (["chatflows/*"], "chatflows/x/y", "chatflows:view", True),
        (["chatflows/*"], "chatflowsX/x", "chatflows:view", False),
        (["chatflows"], "chatflows/anything", "chatflows:view", True),
        (["chatflows/abc", "tools/*"], "tools/t1", "tools:view", True),
        (["chatflows/abc", "tools/*"], "chatflows/zzz", "chatflows:view", False),
        # Empty resource: the action's category is the collection.
        (["chatflows/*"], "", "chatflows:create", True),
        (["chatflows/*"], "", "agentflows:create", False),
        (["chatflows/abc"], "", "chatflows:create", False),
    ],
)
def test_scope_allows(patterns, resource, action, allowed):
    assert Scope.compile(patterns).allows(resource, action) is allowed


def test_compile_normalises():
    assert Scope.compile([]).unrestricted
    assert not Scope.compile(["chatflows/a"]).unrestricted
    assert Scope.compile(["chatflows/*", "chatflows", "a/b"]) == Scope.compile(["a/b", "chatflows"])


@pytest.mark.parametrize(
    ("mine", "theirs", "covers"),
    [
        ([], [], True),
        ([], ["chatflows/x"], True),
        (["chatflows/*"], [], False),
        (["chatflows/x"], [], False),
        (["chatflows/*"], ["chatflows/x"], True),
        (["chatflows/*"], ["chatflows/*"], True),
        (["chatflows/x"], ["chatflows/*"], False),
        (["chatflows/x"], ["chatflows/x"], True),
        (["chatflows/x"], ["chatflows/x/y"], True),
        (["chatflows/x"], ["chatflows/xy"], False),
        (["chatflows/x"], ["chatflows/x", "tools/t"], False),
        (["chatflows/*", "tools/*"], ["chatflows/x", "tools/t"], True),
    ],
)
def test_scope_covers(mine, theirs, covers):
    assert Scope.compile(mine).covers(Scope.compile(theirs)) is covers
