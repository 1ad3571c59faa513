"""Every HTTP route of an installed Flowise, read from its compiled server (`node_modules/flowise/dist`).

`python -m tests.flowise_routes_extract <dist dir>` prints one route a line, in the order Flowise's main
router registers them (Express serves a request with the first route that matches it), then the routes
the app registers itself (none of which a main-router route shadows):

    METHOD PATH ACCESS PERMISSIONS

PATH is in keygate's template syntax (`{id}` for Express's `:id`; a route Express registers under several
paths is one line per path); METHOD `*` is a route Express serves for any method (`router.all`,
`app.use`). ACCESS is what Flowise's own `/api/v1` middleware demands: `public` (a WHITELIST_URLS
prefix: no key), `session` (an API_KEY_BLACKLIST_URLS prefix: a logged-in UI session only, API keys are
refused) or `key` (a Flowise API key). PERMISSIONS are the route's `checkPermission` /
`checkAnyPermission` names, comma-separated (any one suffices), or `-`.

tests/fixtures/flowise-3.1.4-routes.txt is this output for Flowise 3.1.4, and
tests/unit/test_flowise_routes.py holds keygate's built-in rules to it. `compare(dist)` re-extracts from
an installed Flowise and names the differences from that list (the real-Flowise tests call it).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "flowise-3.1.4-routes.txt"
API = "/api/v1"
_VERBS = {"get": "GET", "post": "POST", "put": "PUT", "patch": "PATCH", "delete": "DELETE", "all": "*",
          "use": "*", "options": "OPTIONS"}
_CALL = re.compile(r"\b(?:this\.)?(router|app)\.(get|post|put|patch|delete|all|use|options)\(")
_STRING = re.compile(r"""\s*(['"])(.*?)\1""")
_REQUIRE = re.compile(r"""const (\w+) = (?:__importDefault\()?require\(["']([^"']+)["']\)""")
_PERMISSION = re.compile(r"""check(?:Any)?Permission\)\(\s*['"]([^'"]*)['"]""")
_CONSTANT = re.compile(r"""^(\w+)\.(\w+) = '([^']*)';""", re.MULTILINE)
_PARAMETER = re.compile(r":(\w+)(\?)?")
_COMMENT = re.compile(r"^\s*//.*$", re.MULTILINE)


@dataclass(frozen=True, order=True)
class FlowiseRoute:
    method: str
    path: str
    access: str  # public | session | key
    permissions: tuple[str, ...]

    def line(self) -> str:
        return f"{self.method} {self.path} {self.access} {','.join(self.permissions) or '-'}"

    @classmethod
    def parse(cls, line: str) -> FlowiseRoute:
        method, path, access, permissions = line.split()
        return cls(method, path, access, tuple(permissions.split(",")) if permissions != "-" else ())


def _arguments(text: str, start: int) -> str:
    """The text between the parenthesis opened just before `start` and its match (strings skipped)."""
    depth, i, quote = 1, start, ""
    while depth:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1
    return text[start:i - 1]


def _paths(arguments: str, constants: dict[str, str]) -> list[str] | None:
    """The path(s) a call registers: a string, an array of strings, or a class constant (SSO); None if
    the call has no path (middleware for every path)."""
    head = arguments.lstrip()
    if head.startswith("["):
        return [string for _, string in _STRING.findall(head[1:head.index("]")])]
    if (string := _STRING.match(head)) is not None:
        return [string.group(2)]
    name = re.match(r"(\w+)(?:_\d+\.default)?\.(\w+)", head)
    if name is not None and f"{name.group(1)}.{name.group(2)}" in constants:
        return [constants[f"{name.group(1)}.{name.group(2)}"]]
    return None


def _templates(prefix: str, path: str) -> list[str]:
    """keygate templates for an Express path under `prefix`; an optional `:x?` gives two."""
    joined = (prefix.rstrip("/") + "/" + path.lstrip("/")).rstrip("/") or "/"
    variants = [joined]
    while any("?" in v for v in variants):
        variants = [w for v in variants for w in ((re.sub(r"/:\w+\?", "", v, count=1),
                                                    re.sub(r":(\w+)\?", r":\1", v, count=1)) if "?" in v else (v,))]
    return [_PARAMETER.sub(lambda m: "{" + m.group(1) + "}", v) for v in variants]


def _module(base: Path, name: str) -> Path:
    target = (base.parent / name).resolve()
    file = target.with_name(target.name + ".js")
    return file if file.exists() else target / "index.js"


def _router(file: Path, prefix: str, constants: dict[str, str], out: list[tuple[str, str, tuple[str, ...]]]) -> None:
    """Append the (method, path, permissions) `file` registers under `prefix`, following `router.use`."""
    text = _COMMENT.sub("", file.read_text())
    imports = dict(_REQUIRE.findall(text))
    for call in _CALL.finditer(text):
        arguments = _arguments(text, call.end())
        paths = _paths(arguments, constants)
        if paths is None:
            continue
        verb = call.group(2)
        mounted = re.search(r"(\w+)\.default\s*$", arguments.strip())
        if verb == "use" and mounted and mounted.group(1) in imports and imports[mounted.group(1)].startswith("."):
            for path in paths:
                _router(_module(file, imports[mounted.group(1)]), prefix + path, constants, out)
            continue
        permissions = tuple(p for group in _PERMISSION.findall(arguments) for p in group.split(",") if p)
        for path in paths:
            for template in _templates(prefix, path):
                if template.startswith(API):
                    out.append((_VERBS[verb], template, permissions))


def _prefixes(constants_js: str, name: str, constants: dict[str, str]) -> tuple[str, ...]:
    body = re.search(rf"exports\.{name} = \[(.*?)\];", constants_js, re.DOTALL)
    assert body is not None, f"{name} not found in utils/constants.js"
    out = []
    for item in (i.strip() for i in body.group(1).split(",")):
        if item:
            string = _STRING.match(item)
            out.append(string.group(2) if string else constants[re.sub(r"_\d+\.default", "", item)])
    return tuple(out)


def extract(dist: Path) -> list[FlowiseRoute]:
    """Flowise's routes under /api/v1, in registration order: the main router, then what the app,
    its passport set-up, its SSO providers and its Prometheus metrics register themselves."""
    constants: dict[str, str] = {}
    for sso in sorted((dist / "enterprise" / "sso").glob("*SSO.js")):
        constants.update({f"{c}.{n}": v for c, n, v in _CONSTANT.findall(sso.read_text())})
    found: list[tuple[str, str, tuple[str, ...]]] = []
    _router(dist / "index.js", "", constants, found)
    for extra in ("enterprise/middleware/passport/index.js", "metrics/Prometheus.js",
                  *(f"enterprise/sso/{p.name}" for p in sorted((dist / "enterprise" / "sso").glob("*SSO.js")))):
        _router(dist / extra, "", constants, found)
    constants_js = (dist / "utils" / "constants.js").read_text()
    public = _prefixes(constants_js, "WHITELIST_URLS", constants)
    session = _prefixes(constants_js, "API_KEY_BLACKLIST_URLS", constants)
    routes, seen = [], set()
    for method, path, permissions in found:
        access = ("public" if path.startswith(public) or (path + "/").startswith(public)
                  else "session" if path.startswith(session) else "key")
        route = FlowiseRoute(method, path, access, permissions)
        if route not in seen:
            seen.add(route)
            routes.append(route)
    return routes


def load(fixture: Path = FIXTURE) -> list[FlowiseRoute]:
    return [FlowiseRoute.parse(line) for line in fixture.read_text().splitlines() if line.strip()]


def compare(dist: Path, fixture: Path = FIXTURE) -> list[str]:
    """How the Flowise installed at `dist` differs from the committed list: `+ line` for a route only
    it has, `- line` for one only the list has; empty when they agree."""
    installed, listed = {r.line() for r in extract(dist)}, {r.line() for r in load(fixture)}
    return [f"+ {line}" for line in sorted(installed - listed)] + [f"- {line}" for line in sorted(listed - installed)]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not (Path(argv[0]) / "index.js").is_file():
        print("usage: python -m tests.flowise_routes_extract <node_modules/flowise/dist>", file=sys.stderr)
        return 2
    for route in extract(Path(argv[0])):
        print(route.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
