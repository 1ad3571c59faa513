"""keygate.client.asgi in front of a real Starlette app, asking a real keygate (httpx drives the app):
routes map to (resource, action) with path parameters, 401 carries WWW-Authenticate, 403 a JSON body,
`?apiKey=` counts only where a route allows it, the decision reaches the endpoint, and keygate down is 503."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from keygate.client import Authorizer, ClientSettings, Retry
from keygate.client.asgi import KeygateMiddleware, Route
from keygate.server import App

from .processes import free_port
from .support import Client

ROUTES = [
    Route("/health", None),
    Route("/flows/{flow}", "chatflows:view", resource="chatflows/{flow}", methods=frozenset({"GET"})),
    Route("/flows/{flow}", "chatflows:update", resource="chatflows/{flow}", methods=frozenset({"PUT"})),
    Route("/predict/{flow}", "chatflows:view", resource="chatflows/{flow}", query_key=True),
]


async def endpoint(request: Request) -> JSONResponse:
    decision = getattr(request.state, "keygate", None)
    return JSONResponse({"key": decision.key_name if decision else None, "flow": request.path_params.get("flow")})


def service() -> Starlette:
    return Starlette(routes=[StarletteRoute("/health", endpoint), StarletteRoute("/flows/{flow}", endpoint,
                                                                                  methods=["GET", "PUT"]),
                             StarletteRoute("/predict/{flow}", endpoint), StarletteRoute("/other", endpoint)])


@asynccontextmanager
async def http(settings: ClientSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with Authorizer(settings) as authz:
        app = KeygateMiddleware(service(), authz, ROUTES)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
            yield client


def summary(response: httpx.Response) -> tuple[int, object, str | None]:
    return response.status_code, response.json(), response.headers.get("www-authenticate")


async def test_routes_are_guarded_against_a_real_keygate(app: App, client: Client) -> None:
    created = await client.create(name="viewer", permissions=["chatflows:view"], resources=["chatflows/a"])
    bearer = {"authorization": f"Bearer {created.api_key}"}
    realm = 'Bearer realm="keygate"'
    async with http(ClientSettings(server=f"127.0.0.1:{app.port}")) as svc:
        found = {
            "public": summary(await svc.get("/health")),
            "allowed": summary(await svc.get("/flows/a", headers=bearer)),
            "other flow": summary(await svc.get("/flows/b", headers=bearer)),
            "no permission": summary(await svc.put("/flows/a", headers=bearer)),
            "no key": summary(await svc.get("/flows/a")),
            "unknown key": summary(await svc.get("/flows/a", headers={"authorization": "Bearer kg_" + "x" * 49})),
            "query key where allowed": summary(await svc.get("/predict/a", params={"apiKey": created.api_key})),
            "query key elsewhere": summary(await svc.get("/flows/a", params={"apiKey": created.api_key})),
            "no rule": summary(await svc.get("/other", headers=bearer)),
            "wildcard segment": summary(await svc.get("/flows/*", headers=bearer)),
            "encoded slash": summary(await svc.get("/flows/a%2F..%2Fb", headers=bearer)),
        }
    assert found == {
        "public": (200, {"key": None, "flow": None}, None),
        "allowed": (200, {"key": "viewer", "flow": "a"}, None),
        "other flow": (403, {"error": {"code": "RESOURCE_OUT_OF_SCOPE", "message": found["other flow"][1]["error"]
                                       ["message"]}}, None),
        "no permission": (403, found["no permission"][1], None),
        "no key": (401, {"error": {"code": "KEY_MISSING",
                                   "message": "send the key as authorization: Bearer <key>"}}, realm),
        "unknown key": (401, found["unknown key"][1], f'{realm}, error="invalid_token"'),
        "query key where allowed": (200, {"key": "viewer", "flow": "a"}, None),
        "query key elsewhere": (401, found["no key"][1], realm),
        "no rule": (403, {"error": {"code": "NO_RULE", "message": "no authorization rule for this route"}}, None),
        # A caller's path segment cannot widen the resource: `*` is no resource name (keygate: INVALID_ARGUMENT,
        # answered 400 naming the field), and an encoded `/` makes a path no one-segment template matches.
        "wildcard segment": (400, found["wildcard segment"][1], None),
        "encoded slash": found["no rule"],
    }
    assert found["wildcard segment"][1]["error"]["code"] == "INVALID_ARGUMENT"
    assert found["no permission"][1]["error"]["code"] == "PERMISSION_DENIED"
    assert found["unknown key"][1]["error"]["code"] == "KEY_NOT_FOUND"
    assert created.api_key not in repr(found)


async def test_keygate_down_is_503_and_the_endpoint_never_runs() -> None:
    down = ClientSettings(server=f"127.0.0.1:{free_port()}", timeout=0.5, retry=Retry(attempts=2, base=0.01))
    async with http(down) as svc:
        response = await svc.get("/flows/a", headers={"authorization": "Bearer kg_" + "x" * 49})
        public = await svc.get("/health")
    assert (response.status_code, response.headers["retry-after"], response.json()["error"]["code"]) == (
        503, "1", "UNAVAILABLE")
    assert public.status_code == 200


async def test_a_refused_websocket_is_closed_before_it_is_accepted() -> None:
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async with Authorizer(ClientSettings(server=f"127.0.0.1:{free_port()}")) as authz:
        app = KeygateMiddleware(service(), authz, ROUTES)
        await app({"type": "websocket", "path": "/flows/a", "headers": [], "query_string": b""}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
