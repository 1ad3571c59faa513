"""The database URLs at start: PostgreSQL URLs only, and the primary's several hosts need a session
attribute that only accepts the primary."""

from __future__ import annotations

import pytest

from keygate.domain.errors import InvalidArgument
from keygate.store.failover import check_primary_url, check_url, hosts

TWO_HOSTS = "postgresql://keygate:pw@db1:5432,db2:5432/keygate"


@pytest.mark.parametrize("url", [
    "",  # the embedded PostgreSQL
    "postgresql://keygate@db1:5432/keygate",
    "postgresql://keygate@db1/keygate?target_session_attrs=primary",
    f"{TWO_HOSTS}?target_session_attrs=read-write",
    f"{TWO_HOSTS}?sslmode=require&target_session_attrs=primary",
])
def test_a_url_that_writes_to_the_primary_passes_unchanged(url: str) -> None:
    assert check_primary_url("DATABASE_URL", url) == url


@pytest.mark.parametrize(("url", "says"), [
    (TWO_HOSTS, "names several hosts: add target_session_attrs=read-write"),
    ("postgresql:///keygate?host=/run/a,/run/b", "names several hosts"),
    (f"{TWO_HOSTS}?target_session_attrs=prefer-standby", "target_session_attrs must be read-write or primary"),
    ("postgresql://keygate@db1/keygate?target_session_attrs=read-only", "must be read-write or primary"),
])
def test_a_url_that_could_land_writes_on_a_replica_is_refused_without_quoting_it(url: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_primary_url("DATABASE_URL", url)
    assert err.value.field == "DATABASE_URL" and says in err.value.description
    assert "pw" not in str(err.value) and "db1" not in str(err.value)


def test_hosts_are_counted_in_the_authority_and_the_host_parameter() -> None:
    assert hosts("postgresql://u:p@a:1,b:2,c:3/db") == 3
    assert hosts("postgresql:///db?host=/tmp") == 1
    assert hosts("postgresql://a/db?host=b") == 2


@pytest.mark.parametrize("url", ["notaurl", "mysql://keygate:pw@db1/keygate", "db1:5432/keygate", "http://db1/keygate"])
@pytest.mark.parametrize("check", [check_url, check_primary_url])
def test_what_is_not_a_postgresql_url_is_refused_without_quoting_it(check: object, url: str) -> None:
    """A malformed DATABASE_URL was 'the database is unreachable ... retry shortly'; a malformed read URL
    started keygate, which then never used the replica and said nothing."""
    with pytest.raises(InvalidArgument) as refused:
        check("KEYGATE_DATABASE_READ_URL", url)  # type: ignore[operator]
    assert refused.value.field == "KEYGATE_DATABASE_READ_URL" and "must be a PostgreSQL URL" in str(refused.value)
    assert "pw" not in str(refused.value) and "db1" not in str(refused.value)


@pytest.mark.parametrize("url", ["", "postgres://keygate@db1/keygate", "POSTGRESQL://keygate@db1/keygate",
                                 "postgresql:///keygate?host=/run/postgresql"])
def test_postgresql_urls_pass_unchanged(url: str) -> None:
    assert check_url("KEYGATE_DATABASE_READ_URL", url) == url
