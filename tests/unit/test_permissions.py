"""Permission catalog, validation and implication."""

import pytest

from keygate.domain.errors import InvalidArgument
from keygate.domain.permissions import Catalog

CATALOG = Catalog.build()

# The seeds' permission table.
SEED_PERMISSIONS = [
    f"{category}:{verb}"
    for category in ("chatflows", "agentflows")
    for verb in ("view", "create", "update", "delete")
] + ["predictions:create"] + [f"apikeys:{verb}" for verb in ("view", "create", "update", "delete")]


@pytest.mark.parametrize("permission", SEED_PERMISSIONS)
def test_seed_permissions_are_in_catalog(permission):
    assert permission in CATALOG.permissions()
    assert CATALOG.validate_grant(permission, "f") == permission
    assert CATALOG.validate_action(permission) == permission


def test_permissions_sorted_and_concrete():
    perms = CATALOG.permissions()
    assert perms == sorted(perms)
    assert not any(p.endswith(":*") or p == "*" for p in perms)


@pytest.mark.parametrize(
    ("granted", "implied"),
    [
        (["chatflows:update"], {"chatflows:update", "chatflows:view"}),
        (["chatflows:delete"], {"chatflows:delete", "chatflows:view"}),
        (["apikeys:create"], {"apikeys:create", "apikeys:view"}),
        (["chatflows:view"], {"chatflows:view"}),
        # Categories without `view` get none.
        (["templates:marketplace"], {"templates:marketplace"}),
        (["users:manage"], {"users:manage"}),
        (["predictions:create"], {"predictions:create"}),
        # Unknown entries imply nothing.
        (["nope:view", "chatflows:nope"], set()),
    ],
)
def test_expand_implication(granted, implied):
    assert CATALOG.expand(granted) == frozenset(implied)


def test_update_does_not_imply_other_verbs_or_categories():
    grants = CATALOG.expand(["chatflows:update"])
    assert "chatflows:delete" not in grants
    assert "agentflows:view" not in grants
    assert "chatflows:*" not in grants


def test_category_wildcard_grants_every_verb_of_that_category_only():
    grants = CATALOG.expand(["chatflows:*"])
    assert "chatflows:*" in grants
    assert {f"chatflows:{v}" for v in CATALOG.verbs["chatflows"]} <= grants
    assert not any(p.startswith("agentflows:") for p in grants)
    assert "*" not in grants


def test_root_grants_everything_including_wildcards():
    grants = CATALOG.expand(["*"])
    assert "*" in grants
    assert set(CATALOG.permissions()) <= grants
    assert {f"{c}:*" for c in CATALOG.verbs} <= grants


@pytest.mark.parametrize("permission", ["*", "chatflows:*", "users:*", "chatflows:view"])
def test_validate_grant_accepts(permission):
    assert CATALOG.validate_grant(permission, "permissions[0]") == permission


@pytest.mark.parametrize(
    "permission",
    ["chatflows:fly", "rockets:view", "rockets:*", "chatflows", "chatflows:", ":view", "", "**", "chatflows:view "],
)
def test_validate_grant_rejects_naming_permission_and_field(permission):
    with pytest.raises(InvalidArgument) as err:
        CATALOG.validate_grant(permission, "permissions[3]")
    assert err.value.field == "permissions[3]"
    assert repr(permission) in err.value.message


@pytest.mark.parametrize("action", ["*", "chatflows:*", "chatflows:fly", "rockets:view", "chatflows", ""])
def test_validate_action_rejects_wildcards_and_unknowns(action):
    with pytest.raises(InvalidArgument) as err:
        CATALOG.validate_action(action)
    assert err.value.field == "action"
    assert repr(action) in err.value.message
    with pytest.raises(InvalidArgument) as err:
        CATALOG.validate_action(action, "items[2].action")
    assert err.value.field == "items[2].action"


def test_build_adds_operator_categories_and_verbs():
    catalog = Catalog.build({"reports": ["view", "run"], "chatflows": ["archive"]})
    assert {"reports:view", "reports:run", "chatflows:archive", "chatflows:update"} <= set(catalog.permissions())
    assert catalog.validate_action("reports:run") == "reports:run"
    assert catalog.expand(["reports:run"]) == {"reports:run", "reports:view"}
    assert catalog.expand(["chatflows:archive"]) == {"chatflows:archive", "chatflows:view"}
    # The default catalog is not modified.
    assert "reports" not in CATALOG.verbs
    assert "chatflows:archive" not in CATALOG.permissions()


@pytest.mark.parametrize(
    "extra",
    [{"": ["view"]}, {"1reports": ["view"]}, {"re ports": ["view"]}, {"re:ports": ["view"]}, {"reports": ["*"]},
     {"reports": ["vi:ew"]}, {"reports": [""]}, {"reports": ["-run"]}, {"re/ports": ["view"]}],
)
def test_build_validates_names(extra):
    with pytest.raises(InvalidArgument) as err:
        Catalog.build(extra)
    assert err.value.field == "catalog"
