"""keygate behind a real Envoy (the shipped deploy/envoy/envoy.yaml), as a client and an upstream see it.

Allowed requests reach the upstream with keygate's identity headers and without the key; denials are
keygate's own 401/403 (JSON body, WWW-Authenticate on 401) and never reach the upstream; revocation
shows within a second; keygate gone or unable to decide is a 503, never a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2

from keygate.domain.keys import KeyFormat
from keygate.server import FLOWISE_KEY_SERVICE, KEY_SERVICE, SERVICE_NAMES, App
from keygate.v1 import keys_pb2, keys_pb2_grpc

from .conftest import (
    ROOT,
    SHIPPED,
    Database,
    Mesh,
    Response,
    ext_authz_grpc_service,
    keygate_cluster,
    shipped_config,
    validate,
)

IDENTITY = ("x-keygate-key-id", "x-keygate-workspace-id", "x-keygate-key-name")
KEY_CARRIERS = ("authorization", "x-api-key")
REVOCATION_BOUND = 1.0  # seconds, from the issue
POLL = 0.01


# --- helpers ----------------------------------------------------------------------------------


def chatflow() -> str:
    return str(uuid.uuid4())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def seen_headers(response: Response) -> dict[str, list[str]]:
    """The headers the upstream received, by lowercased name (every value kept)."""
    out: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        out.setdefault(name, []).append(value)
    return out


def assert_identity(response: Response, key: keys_pb2.CreateKeyResponse) -> None:
    """200 from the upstream, which saw exactly keygate's identity and no key anywhere."""
    assert response.status == 200, response
    headers = seen_headers(response)
    assert {name: headers.get(name) for name in IDENTITY} == {
        "x-keygate-key-id": [key.key.id], "x-keygate-workspace-id": [key.key.workspace_id],
        "x-keygate-key-name": [key.key.name]}
    assert not [name for name in KEY_CARRIERS if name in headers], headers
    assert "apiKey" not in parse_qs(urlsplit(response.json()["path"]).query)
    assert key.api_key not in response.body.decode()


def assert_denied(response: Response, status: int, code: str) -> None:
    """keygate's denial as the client sees it: status, JSON body with the code and a message."""
    assert (response.status, response.headers.get("content-type")) == (status, "application/json"), response
    body = response.json()
    assert body["code"] == code and body["message"], body


async def not_upstream(mesh: Mesh, call: Awaitable[Response]) -> Response:
    """Run a request that must not reach the upstream."""
    before = len(mesh.upstream.seen)
    response = await call
    assert mesh.upstream.seen[before:] == [], "a refused request reached the upstream"
    return response


async def poll(request: Callable[[], Awaitable[Response]], until: Callable[[Response], bool],
               bound: float) -> tuple[Response, float]:
    """Repeat a request until `until` holds or `bound` passes; the last answer and the time it took."""
    started = time.monotonic()
    while True:
        response = await request()
        elapsed = time.monotonic() - started
        if until(response) or elapsed > bound:
            return response, elapsed
        await asyncio.sleep(POLL)


# --- allowed: identity headers in, key out ----------------------------------------------------


@pytest.mark.parametrize("carrier", [
    pytest.param(bearer, id="authorization-bearer"),
    pytest.param(lambda key: {"X-API-Key": key}, id="x-api-key"),
    pytest.param(lambda key: {"Authorization": f"bearer {key}"}, id="lowercase-scheme"),
])
async def test_valid_key_reaches_upstream_with_identity_and_without_the_key(
        mesh: Mesh, carrier: Callable[[str], dict[str, str]]) -> None:
    key = await mesh.create(name="reader", permissions=["chatflows:view"])
    flow = chatflow()

    response = await mesh.request("GET", f"/api/v1/chatflows/{flow}?x=1", carrier(key.api_key))

    assert_identity(response, key)
    assert (response.json()["method"], response.json()["path"]) == ("GET", f"/api/v1/chatflows/{flow}?x=1")


@pytest.mark.parametrize("headers", [
    pytest.param(lambda key: {"Authorization": f"Bearer   {key}  "}, id="spaces-around-the-key"),
    pytest.param(lambda key: {"Authorization": f"Bearer {key}", "X-API-Key": "kg_another_key"}, id="and-a-key-header"),
    pytest.param(lambda key: {"Authorization": f"BEARER {key}", "X-API-Key": key}, id="upper-case-scheme-and-header"),
])
async def test_a_bearer_key_without_a_query_string_takes_every_key_header_away(
        mesh: Mesh, headers: Callable[[str], dict[str, str]]) -> None:
    """The usual request (a Bearer key, no query string) is read by the servicer's shortest path: the key
    header goes too, whether or not it came."""
    key = await mesh.create(name="reader", permissions=["chatflows:view"])

    response = await mesh.request("GET", f"/api/v1/chatflows/{chatflow()}", headers(key.api_key))

    assert_identity(response, key)
    assert "kg_another_key" not in response.body.decode()


async def test_a_key_in_the_key_header_leaves_another_authorization_scheme_to_the_upstream(mesh: Mesh) -> None:
    key = await mesh.create(name="reader", permissions=["chatflows:view"])
    basic = "Basic c29tZW9uZTplbHNl"

    response = await mesh.request("GET", f"/api/v1/chatflows/{chatflow()}", {"X-API-Key": key.api_key,
                                                                             "Authorization": basic})

    assert response.status == 200, response
    assert seen_headers(response).get("authorization") == [basic]
    assert "x-api-key" not in seen_headers(response) and key.api_key not in response.body.decode()


async def test_client_sent_identity_headers_are_overwritten(mesh: Mesh) -> None:
    key = await mesh.create(name="honest", permissions=["chatflows:view"])
    forged = {"x-keygate-key-id": str(uuid.uuid4()), "x-keygate-workspace-id": "ws-admin", "x-keygate-key-name": "root"}

    response = await mesh.request("GET", "/api/v1/chatflows", {**bearer(key.api_key), **forged})

    assert_identity(response, key)


async def test_query_parameter_key_is_accepted_on_predictions_and_removed(mesh: Mesh) -> None:
    key = await mesh.create(name="widget", permissions=["predictions:create"])
    flow = chatflow()

    response = await mesh.request("POST", f"/api/v1/prediction/{flow}?streaming=true&apiKey={key.api_key}&x=2")

    assert_identity(response, key)
    assert response.json()["path"] == f"/api/v1/prediction/{flow}?streaming=true&x=2"


async def test_percent_encoded_parameter_name_does_not_carry_the_key_upstream(mesh: Mesh) -> None:
    key = await mesh.create(name="widget", permissions=["predictions:create"])
    before = len(mesh.upstream.seen)

    response = await mesh.request("POST", f"/api/v1/prediction/{chatflow()}?api%4Bey={key.api_key}")

    assert response.status == 400 and response.json()["code"] == "INVALID_ARGUMENT"
    assert key.api_key not in json.dumps(mesh.upstream.seen[before:])


async def test_query_parameter_key_is_stripped_even_where_it_is_not_accepted(mesh: Mesh) -> None:
    """A header key authorizes; a key also put in the query of a non-prediction route does not travel on."""
    key = await mesh.create(name="both", permissions=["chatflows:view"])

    response = await mesh.request("GET", f"/api/v1/chatflows?apiKey={key.api_key}", bearer(key.api_key))

    assert_identity(response, key)


# --- denied: keygate's answer, never the upstream --------------------------------------------


async def no_key(mesh: Mesh) -> str:
    return ""


async def unknown_key(mesh: Mesh) -> str:
    return KeyFormat().generate()


async def malformed_key(mesh: Mesh) -> str:
    return "fl_" + "x" * 49


async def viewer(mesh: Mesh) -> str:
    return (await mesh.create(permissions=["chatflows:view", "predictions:create"])).api_key


async def scoped_viewer(mesh: Mesh) -> str:
    return (await mesh.create(permissions=["chatflows:view"], resources=["chatflows/mine"])).api_key


async def bound_elsewhere(mesh: Mesh) -> str:
    """A key allowed to predict, on a chatflow bound to another key."""
    owner = await mesh.create(name="owner", permissions=["predictions:create"])
    await mesh.keys.BindResource(keys_pb2.BindResourceRequest(resource="chatflows/bound", key_id=owner.key.id),
                                 metadata=mesh.auth())
    return (await mesh.create(name="other", permissions=["predictions:create"])).api_key


@dataclass(frozen=True)
class Denial:
    key: Callable[[Mesh], Awaitable[str]]
    method: str
    path: str  # {key} = the key in the query string; otherwise it goes in Authorization
    status: int
    code: str
    challenge: str | None  # the WWW-Authenticate header, if any


DENIALS = {
    "no-key": Denial(no_key, "GET", "/api/v1/chatflows", 401, "KEY_MISSING", 'Bearer realm="keygate"'),
    "unknown-key": Denial(unknown_key, "GET", "/api/v1/chatflows", 401, "KEY_NOT_FOUND",
                          'Bearer realm="keygate", error="invalid_token"'),
    "malformed-key": Denial(malformed_key, "GET", "/api/v1/chatflows", 401, "KEY_MALFORMED",
                            'Bearer realm="keygate", error="invalid_token"'),
    "wrong-permission": Denial(viewer, "DELETE", "/api/v1/chatflows/abc", 403, "PERMISSION_DENIED", None),
    "out-of-scope": Denial(scoped_viewer, "GET", "/api/v1/chatflows/theirs", 403, "RESOURCE_OUT_OF_SCOPE", None),
    "bound-to-other-key": Denial(bound_elsewhere, "POST", "/api/v1/prediction/bound", 401,
                                 "RESOURCE_BOUND_TO_OTHER_KEY", 'Bearer realm="keygate", error="invalid_token"'),
    "query-key-where-not-allowed": Denial(viewer, "GET", "/api/v1/chatflows/abc?apiKey={key}", 401, "KEY_MISSING",
                                          'Bearer realm="keygate"'),
    "no-matching-route": Denial(viewer, "GET", "/api/v1/no-such-area", 403, "NO_MATCHING_ROUTE", None),
    "method-without-route": Denial(viewer, "PATCH", "/api/v1/chatflows/abc", 403, "NO_MATCHING_ROUTE", None),
    # Envoy resolves `..` before asking: this is DELETE /api/v1/chatflows/abc, which a viewer may not do.
    # (/api/v1/apikey itself is keygate's own key API, not a Flowise route: test_flowise_door.py.)
    "dot-segments-resolved-first": Denial(viewer, "DELETE", "/api/v1/tools/../chatflows/abc", 403,
                                          "PERMISSION_DENIED", None),
}


@pytest.mark.parametrize("case", DENIALS.values(), ids=DENIALS.keys())
async def test_denied_requests_get_keygates_answer_and_never_reach_upstream(mesh: Mesh, case: Denial) -> None:
    key = await case.key(mesh)
    in_query = "{key}" in case.path
    headers = bearer(key) if key and not in_query else {}

    response = await not_upstream(mesh, mesh.request(case.method, case.path.format(key=key), headers))

    assert_denied(response, case.status, case.code)
    assert response.headers.get("www-authenticate") == case.challenge
    assert not key or key not in response.body.decode()


@pytest.mark.parametrize("spell", [str.upper, lambda flow: flow.replace("-", ""), lambda flow: flow.upper()[:9]
                                   + flow[9:].replace("-", "")], ids=["upper-case", "no-hyphens", "mixed"])
async def test_a_bound_chatflow_cannot_be_reached_by_another_spelling_of_its_id(
    mesh: Mesh, spell: Callable[[str], str]
) -> None:
    """Flowise keeps chatflow ids as PostgreSQL uuid, which reads every one of these as the bound id."""
    flow = chatflow()
    owner = await mesh.create(name="owner", permissions=["predictions:create"])
    other = await mesh.create(name="other", permissions=["predictions:create"])
    await mesh.keys.BindResource(keys_pb2.BindResourceRequest(resource=f"chatflows/{flow}", key_id=owner.key.id),
                                 metadata=mesh.auth())
    for path in (f"/api/v1/prediction/{spell(flow)}", f"/API/V1/Prediction/{spell(flow)}"):
        response = await not_upstream(mesh, mesh.request("POST", path, bearer(other.api_key)))
        assert_denied(response, 401, "RESOURCE_BOUND_TO_OTHER_KEY")
        assert_identity(await mesh.request("POST", path, bearer(owner.api_key)), owner)


async def test_encoded_slash_is_refused_by_envoy_before_authorization(mesh: Mesh) -> None:
    key = await mesh.create(permissions=["chatflows:view"])
    flow = f"/api/v1/chatflows/{chatflow()}"

    response = await not_upstream(mesh, mesh.request("GET", f"{flow}%2F..%2F..%2Fapikey", bearer(key.api_key)))

    assert response.status == 400
    assert (await access_line(mesh, flow))["code"] is None  # Envoy refused it without asking keygate


# --- consistency and failure ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def same_replica(mesh: Mesh) -> AsyncIterator[keys_pb2_grpc.KeyServiceStub]:
    yield mesh.keys


@contextlib.asynccontextmanager
async def another_replica(mesh: Mesh) -> AsyncIterator[keys_pb2_grpc.KeyServiceStub]:
    """A second keygate on the same database, which Envoy does not know: changes reach Envoy's by NOTIFY."""
    app = await App.start(replace(mesh.settings, listen="127.0.0.1:0"), mesh.database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield keys_pb2_grpc.KeyServiceStub(channel)
    finally:
        await app.stop(grace=0)


@pytest.mark.parametrize("replica", [same_replica, another_replica], ids=["same-replica", "another-replica"])
async def test_revoked_key_is_refused_through_envoy_within_a_second(
        mesh: Mesh, replica: Callable[[Mesh], contextlib.AbstractAsyncContextManager[Any]]) -> None:
    key = await mesh.create(permissions=["chatflows:view"])
    flows = lambda: mesh.request("GET", "/api/v1/chatflows", bearer(key.api_key))  # noqa: E731
    assert (await flows()).status == 200  # cached now

    async with replica(mesh) as keys:
        await keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=key.key.id), metadata=mesh.auth())
        response, elapsed = await poll(flows, lambda r: r.status != 200, REVOCATION_BOUND)

    assert_denied(response, 401, "KEY_NOT_FOUND")
    assert elapsed <= REVOCATION_BOUND


async def test_keygate_stopped_envoy_fails_closed(mesh: Mesh) -> None:
    key = await mesh.create(permissions=["chatflows:view"])
    assert (await mesh.request("GET", "/api/v1/chatflows", bearer(key.api_key))).status == 200

    await mesh.stop()
    response = await not_upstream(mesh, mesh.request("GET", "/api/v1/chatflows", bearer(key.api_key)))

    assert response.status == 503


# --- keygate cannot decide: the database is gone and the key is not cached --------------------


class Proxy:
    """A unix-socket relay in front of PostgreSQL that can be cut: connections dropped, new ones refused."""

    def __init__(self, url: str, directory: Path) -> None:
        socket_dir = parse_qs(urlsplit(url).query)["host"][0]
        (self.target,) = [p for p in Path(socket_dir).glob(".s.PGSQL.*") if p.suffix != ".lock"]
        self.path = directory / self.target.name
        self.url = url.replace(socket_dir, str(directory))
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._relay, path=str(self.path))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
        self.writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        self.path.unlink(missing_ok=True)
        for writer in self.writers:
            writer.transport.abort()


@pytest.fixture
async def cuttable_db(database: Database) -> AsyncIterator[Proxy]:
    directory = Path(tempfile.mkdtemp(prefix="kg-pg-"))  # short: a unix socket path has ~100 bytes
    proxy = Proxy(database.url, directory)
    await proxy.start()
    yield proxy
    await proxy.cut()
    shutil.rmtree(directory, ignore_errors=True)


async def test_database_unreachable_and_key_not_cached_is_503_with_retry_after(
        mesh: Mesh, cuttable_db: Proxy) -> None:
    mesh.database_url = cuttable_db.url
    await mesh.start()
    cached = await mesh.create(permissions=["chatflows:view"])
    uncached = await mesh.create(permissions=["chatflows:view"])
    assert (await mesh.request("GET", "/api/v1/chatflows", bearer(cached.api_key))).status == 200

    await cuttable_db.cut()
    response = await not_upstream(mesh, mesh.request("GET", "/api/v1/chatflows", bearer(uncached.api_key)))

    assert_denied(response, 503, "UNAVAILABLE")
    assert response.headers.get("retry-after") == "1"
    # A key verified a moment ago still answers during the outage grace: no outage for its users.
    assert (await mesh.request("GET", "/api/v1/chatflows", bearer(cached.api_key))).status == 200


async def test_keygates_answers_are_never_retried(mesh: Mesh, cuttable_db: Proxy) -> None:
    """The shipped ext_authz retry policy retries only calls keygate never decided: a refusal, and keygate's
    own 503 when it cannot decide, are answers (gRPC OK), each asked once."""
    mesh.database_url = cuttable_db.url
    await mesh.start()
    key = await mesh.create(permissions=["chatflows:view"])
    uncached = await mesh.create(permissions=["chatflows:view"])
    retries = mesh.envoy.stat("cluster.keygate.upstream_rq_retry")

    assert_denied(await mesh.request("DELETE", "/api/v1/chatflows/x", bearer(key.api_key)), 403, "PERMISSION_DENIED")
    assert_denied(await mesh.request("GET", "/api/v1/chatflows", bearer("kg_no_such_key")), 401, "KEY_MALFORMED")
    await cuttable_db.cut()
    assert_denied(await mesh.request("GET", "/api/v1/chatflows", bearer(uncached.api_key)), 503, "UNAVAILABLE")

    assert mesh.envoy.stat("cluster.keygate.upstream_rq_retry") == retries


# --- access log: the decision in Envoy's dynamic metadata --------------------------------------


async def access_line(mesh: Mesh, path: str) -> dict[str, Any]:
    """The access-log line of the one request to `path` (Envoy flushes its log every 20 ms here)."""
    deadline = time.monotonic() + 2.0
    while True:
        lines = [line for line in mesh.envoy.access_lines() if line["path"].startswith(path)]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, lines
            return lines[0]
        await asyncio.sleep(POLL)


@pytest.mark.parametrize(("method", "status", "code"), [("GET", 200, "OK"), ("DELETE", 403, "PERMISSION_DENIED")])
async def test_access_log_carries_the_decision_and_never_the_key(
        mesh: Mesh, method: str, status: int, code: str) -> None:
    key = await mesh.create(permissions=["chatflows:view"])
    path = f"/api/v1/chatflows/{chatflow()}"

    assert (await mesh.request(method, path, bearer(key.api_key))).status == status
    line = await access_line(mesh, path)

    assert {k: line[k] for k in ("status", "code", "key_id", "workspace_id")} == {
        "status": status, "code": code, "key_id": key.key.id, "workspace_id": "ws1"}
    # keygate logs refusals (not allowed answers, by default): a decision id joins the two logs' lines.
    assert bool(line["decision_id"]) is (code != "OK")
    assert key.api_key not in json.dumps(line)


@pytest.mark.parametrize(("method", "route", "status", "code"), [
    pytest.param("POST", "/api/v1/prediction", 200, "OK", id="accepted-and-stripped"),
    pytest.param("GET", "/api/v1/chatflows", 401, "KEY_MISSING", id="refused-so-never-stripped"),
])
async def test_access_log_does_not_record_a_query_parameter_key(
        mesh: Mesh, method: str, route: str, status: int, code: str) -> None:
    key = await mesh.create(permissions=["predictions:create", "chatflows:view"])
    path = f"{route}/{chatflow()}"

    assert (await mesh.request(method, f"{path}?apiKey={key.api_key}")).status == status
    line = await access_line(mesh, path)

    assert line["code"] == code and key.api_key not in json.dumps(line)


# --- configurable: unmatched requests allowed --------------------------------------------------


@pytest.fixture
def allow_unmatched(tmp_path: Path) -> Path:
    routes = tmp_path / "routes.yaml"
    routes.write_text(yaml.safe_dump({
        "unmatched": "allow",
        "routes": [{"method": "GET", "path": "/api/v1/chatflows", "action": "chatflows:view"}],
    }))
    return routes


async def test_unmatched_allow_lets_the_request_through_without_identity(mesh: Mesh, allow_unmatched: Path) -> None:
    await mesh.start(routes_file=allow_unmatched)

    response = await mesh.request("GET", "/public/health")

    assert response.status == 200
    assert not [name for name in IDENTITY if name in seen_headers(response)]


async def forged_identity(mesh: Mesh) -> tuple[dict[str, str], list[str]]:
    forged = {"x-keygate-key-id": str(uuid.uuid4()), "x-keygate-workspace-id": "ws1", "x-keygate-key-name": "root"}
    return forged, list(forged.values())


async def presented_key(mesh: Mesh) -> tuple[dict[str, str], list[str]]:
    key = (await mesh.create(permissions=["chatflows:view"])).api_key
    return {**bearer(key), "x-api-key": key, "query": key}, [key]


@pytest.mark.parametrize("sent", [forged_identity, presented_key], ids=["forged-identity", "presented-key"])
async def test_unmatched_allow_passes_neither_forged_identity_nor_a_key(
        mesh: Mesh, allow_unmatched: Path,
        sent: Callable[[Mesh], Awaitable[tuple[dict[str, str], list[str]]]]) -> None:
    headers, secrets = await sent(mesh)
    query = f"?apiKey={headers.pop('query')}" if "query" in headers else ""
    await mesh.start(routes_file=allow_unmatched)

    response = await mesh.request("GET", f"/public/health{query}", headers)

    assert response.status == 200
    assert not [secret for secret in secrets if secret in response.body.decode()], response.json()


# --- the shipped files ------------------------------------------------------------------------


def test_shipped_envoy_configuration_validates_as_is() -> None:
    validate(SHIPPED)


NEVER_DECIDED = {"cancelled", "unavailable", "connect-failure", "refused-stream"}  # keygate never answered


def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def test_shipped_ext_authz_retries_only_calls_keygate_never_decided_within_its_timeout() -> None:
    config = shipped_config()
    service = ext_authz_grpc_service(config)
    policy = service["retry_policy"]
    assert set(policy["retry_on"].split(",")) <= NEVER_DECIDED, policy["retry_on"]
    # Envoy makes max_interval each attempt's timeout: shorter than the call's, it would cut a slow answer
    # short, and a timeout is not retried.
    assert seconds(policy["retry_back_off"]["max_interval"]) >= seconds(service["timeout"])
    assert "retry_policy" not in service["envoy_grpc"]  # for xDS streams only: ext_authz ignores it
    (limits,) = keygate_cluster(config)["circuit_breakers"]["thresholds"]
    assert limits["max_retries"] > 3  # Envoy's default, 3 at once: a replica draining under load fails more


def test_shipped_health_check_asks_about_ext_authz_no_longer_than_a_check_may_take() -> None:
    config = shipped_config()
    cluster = keygate_cluster(config)
    (check,) = cluster["health_checks"]
    service = check["grpc_health_check"]["service_name"]
    # The service keygate says NOT_SERVING for only while it drains: never one that follows the database, which
    # every replica shares (an outage would take them all out while cached keys can still answer).
    assert service == external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
    assert service in SERVICE_NAMES and service not in (KEY_SERVICE, FLOWISE_KEY_SERVICE)
    assert seconds(check["timeout"]) <= seconds(ext_authz_grpc_service(config)["timeout"])
    assert check["unhealthy_threshold"] >= 2  # one slow answer on a loaded machine takes no replica out
    # One endpoint of two may be ejected (Envoy's default, 10 %, ejects none of two), never more than half.
    assert cluster["outlier_detection"]["max_ejection_percent"] == 50


def test_istio_example_names_one_provider_and_the_keygate_service() -> None:
    istio = ROOT / "deploy" / "istio"
    mesh_config = yaml.safe_load((istio / "mesh-config.yaml").read_text())
    namespace = yaml.safe_load((istio / "kustomization.yaml").read_text())["namespace"]
    service = yaml.safe_load((ROOT / "deploy" / "k8s" / "service.yaml").read_text())
    policy = yaml.safe_load((istio / "authorization-policy.yaml").read_text())

    (provider,) = mesh_config["spec"]["meshConfig"]["extensionProviders"]
    grpc_ = provider["envoyExtAuthzGrpc"]
    assert grpc_["service"] == f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    assert grpc_["port"] in [p["port"] for p in service["spec"]["ports"]]
    assert (grpc_["failOpen"], grpc_["statusOnError"]) == (False, "503")
    assert (policy["spec"]["action"], policy["spec"]["provider"]["name"]) == ("CUSTOM", provider["name"])


# --- allowed_cidrs: Envoy gives keygate the client's address -----------------------------------


async def test_allowed_cidrs_hold_at_the_door_and_a_forwarded_header_does_not_move_the_client(mesh: Mesh) -> None:
    """The client connects from 127.0.0.1: a key limited to 127.0.0.0/8 passes, one limited to 10.0.0.0/8 is
    refused (403 IP_NOT_ALLOWED) and stays refused when the client claims 10.0.0.1 in X-Forwarded-For."""
    local = await mesh.create(name="local", permissions=["chatflows:view"], allowed_cidrs=["127.0.0.0/8"])
    remote = await mesh.create(name="remote", permissions=["chatflows:view"], allowed_cidrs=["10.0.0.0/8"])
    path = f"/api/v1/chatflows/{chatflow()}"

    assert_identity(await mesh.request("GET", path, bearer(local.api_key)), local)
    for forged in ({}, {"X-Forwarded-For": "10.0.0.1"}, {"X-Forwarded-For": "10.0.0.1, 10.0.0.2"},
                   {"X-Real-IP": "10.0.0.1"}, {"Forwarded": "for=10.0.0.1"}):
        response = await not_upstream(mesh, mesh.request("GET", path, bearer(remote.api_key) | forged))
        assert_denied(response, 403, "IP_NOT_ALLOWED")
