"""What the deployment files are checked against: the settings keygate's code reads, and the files themselves."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"

_VARIABLE = re.compile(r"(KEYGATE_[A-Z0-9_]+|DATABASE_URL)\Z")
# Strings of that shape in service/ that are not environment variables.
NOT_SETTINGS = {"KEYGATE_ERROR": "the google.rpc.ErrorInfo reason of KeygateError"}
# Settings that other parts of issue 8 add (names fixed by the lead), which the image and the manifests
# already set. Once the code reads one, test_pending_settings_are_not_yet_read asks to strike it here.
PENDING = {
    "KEYGATE_METRICS": "metrics endpoint (host:port or off)",
}


def variables_in(path: Path) -> set[str]:
    """Every environment variable name written as a string in one module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _VARIABLE.match(node.value):
            names.add(node.value)
    return names - NOT_SETTINGS.keys()


def variables_read() -> set[str]:
    """... in all of keygate's code (the generated stubs in service/v1 aside)."""
    service = ROOT / "service"
    return set().union(*(variables_in(p) for p in service.rglob("*.py") if p.parent != service / "v1"))


def documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s (the base, not overlays), by (kind, name)."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in documents(path):
            if doc.get("kind") != "Kustomization":
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def port(address: str) -> int:
    return int(address.rpartition(":")[2])
