"""IP allow-list: inside a listed network or refused; one meaning per address, whatever its spelling."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.domain.decision import Code
from keygate.domain.errors import InvalidArgument
from keygate.domain.evaluators.ip import ALLOWED_NETWORKS, client_ip

from .helpers import ask, cred

LISTED = cred(cidrs=("10.0.0.0/8", "2001:db8::/32"))


def verdict(credential, address):
    refused = ALLOWED_NETWORKS.evaluate(credential, ask(credential, address=address))
    return None if refused is None else refused.code


@pytest.mark.parametrize(("address", "allowed"), [
    ("10.1.2.3", True),
    ("::ffff:10.1.2.3", True),  # IPv4-mapped: the IPv4 address
    ("2001:db8::7", True),
    ("2001:DB8:0:0:0:0:0:7", True),
    ("11.0.0.1", False),
    ("::ffff:11.0.0.1", False),
    ("2001:db9::1", False),
    ("", False),  # unknown: fail closed
    ("not-an-address", False),
    ("010.1.2.3", False),  # ambiguous (octal?) spellings are not addresses
])
def test_listed_key(address, allowed):
    assert verdict(LISTED, address) is (None if allowed else Code.IP_NOT_ALLOWED)


def test_a_key_without_a_list_admits_any_address_and_none():
    for address in ("", "11.0.0.1", "garbage"):
        assert verdict(cred(), address) is None


def test_client_ip_names_the_field():
    with pytest.raises(InvalidArgument) as raised:
        client_ip("nope", "items[0].client_address")
    assert raised.value.field == "items[0].client_address"


@given(st.ip_addresses(v=4), st.integers(8, 32))
def test_ipv4_and_its_mapped_spelling_share_one_verdict(address, prefix):
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    for listed in (cred(cidrs=(str(network),)), cred(cidrs=("192.0.2.0/24",))):
        mapped = f"::ffff:{address}"
        expanded = ipaddress.IPv6Address(f"::ffff:{address}").exploded
        assert verdict(listed, str(address)) == verdict(listed, mapped) == verdict(listed, expanded)


@given(st.ip_addresses(v=6))
def test_an_ipv6_address_in_any_spelling_has_one_verdict(address):
    listed = cred(cidrs=("2001:db8::/32", "10.0.0.0/8"))
    spellings = {str(address), address.exploded, address.exploded.upper(), address.compressed}
    assert len({verdict(listed, s) for s in spellings}) == 1
