"""The database URLs as keygate checks them at start: each a PostgreSQL URL (a malformed one would
otherwise pass for an unreachable database, or for a read replica that is never used), and the primary's
with several hosts only with a session attribute that makes every connection (pool, change listener,
migrations) go to the one that accepts writes.

With `postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write` asyncpg tries the hosts in
order and keeps the first that is not read-only, so after a failover (the primary dead, a replica
promoted) a new connection finds the new primary by itself. Without the attribute it would keep the
first host that answers, which may be a replica: writes would fail and the change listener could not
LISTEN. The check never quotes the URL, which may carry a password.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from ..domain.errors import InvalidArgument

WRITABLE = ("read-write", "primary")  # asyncpg's target_session_attrs that only accept a writable server
SCHEMES = ("postgresql", "postgres")  # the URL schemes asyncpg connects with


def hosts(url: str) -> int:
    """How many hosts the URL names, in its authority (h1:p1,h2:p2) and its `host` parameters."""
    parts = urlsplit(url)
    authority = parts.netloc.rpartition("@")[2]
    named = [h for h in authority.split(",") if h]
    for value in parse_qs(parts.query).get("host", []):
        named += [h for h in value.split(",") if h]
    return len(named)


def check_url(variable: str, url: str) -> str:
    """`url` unchanged, or InvalidArgument naming `variable` when it is not a PostgreSQL URL. An empty URL
    (the setting unset) passes."""
    if url and urlsplit(url).scheme.lower() not in SCHEMES:
        raise InvalidArgument(variable, "must be a PostgreSQL URL, postgresql://user@host:port/database")
    return url


def check_primary_url(variable: str, url: str) -> str:
    """`url` unchanged, or InvalidArgument naming `variable` when it is not a PostgreSQL URL or its session
    attribute could land writes on a replica. An empty URL (the embedded PostgreSQL) passes."""
    check_url(variable, url)
    attrs = parse_qs(urlsplit(url).query).get("target_session_attrs", [])
    if any(attr not in WRITABLE for attr in attrs):
        raise InvalidArgument(variable, f"target_session_attrs must be {' or '.join(WRITABLE)}: keygate writes "
                                        "through this URL")
    if hosts(url) > 1 and not attrs:
        raise InvalidArgument(variable, "names several hosts: add target_session_attrs=read-write so that "
                                        "keygate connects to the primary, and finds the new one after a failover")
    return url
