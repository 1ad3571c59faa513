"""Every permission of Flowise's catalog is described in its own words; nothing is described that is not there."""

from keygate.domain.descriptions import FLOWISE_NOUNS, FLOWISE_SENTENCES, describe, list_permissions
from keygate.domain.permissions import FLOWISE_CATALOG, Catalog

GENERIC = "defined by this deployment"


def test_every_flowise_permission_has_its_own_description() -> None:
    for category, verbs in FLOWISE_CATALOG.items():
        for verb in verbs:
            description = describe(f"{category}:{verb}")
            assert description and GENERIC not in description, f"{category}:{verb}"


def test_no_description_names_a_permission_or_category_the_catalog_lacks() -> None:
    permissions = set(Catalog.build().permissions())
    assert set(FLOWISE_SENTENCES) <= permissions
    assert set(FLOWISE_NOUNS) <= set(FLOWISE_CATALOG)


def test_the_listing_leaves_out_root_and_lists_each_wildcard_once() -> None:
    names = [p.name for p in list_permissions(Catalog.build())]
    assert "*" not in names and len(names) == len(set(names))
    assert {n for n in names if n.endswith(":*")} == {f"{c}:*" for c in FLOWISE_CATALOG}
