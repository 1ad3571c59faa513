"""IP allow-list: a key with `allowed_cidrs` answers only to requests from inside one of its networks.

Fail closed: a request to such a key without a client address, or with one that is not an IP address,
is refused. An address has one meaning whatever its spelling: `ipaddress` reads it, and an IPv4-mapped
IPv6 address (::ffff:10.0.0.1, what a dual-stack socket reports for an IPv4 client) is its IPv4
address, so neither spelling can slip past a list written in the other. A key without a list costs
one truth test.
"""

from __future__ import annotations

import ipaddress

from ..decision import Code, Credential, Decision
from ..errors import InvalidArgument
from .base import Question

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_ip(text: str, field: str = "client_address") -> Address:
    """The address `text` spells, IPv4-mapped IPv6 unwrapped; InvalidArgument naming `field` otherwise."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(field, "must be an IPv4 or IPv6 address such as 203.0.113.7 or 2001:db8::7") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AllowedNetworks:
    facts = frozenset({"client_address"})
    key_data = frozenset({"networks"})
    keyed_when = "networks"  # the address matters only to a key with a list: others share one memo entry

    def evaluate(self, credential: Credential, question: Question) -> Decision | None:
        networks = credential.networks
        if not networks:
            return None
        text = question.item.client_address
        if not text:
            return Decision(Code.IP_NOT_ALLOWED, "the key is limited to some networks and the client address "
                                                 "is unknown", credential)
        try:
            address = client_ip(text)
        except InvalidArgument:
            return Decision(Code.IP_NOT_ALLOWED, "the client address is not an IP address", credential)
        if any(address in network for network in networks):
            return None
        return Decision(Code.IP_NOT_ALLOWED, "the client address is outside the key's allowed networks", credential)


ALLOWED_NETWORKS = AllowedNetworks()
