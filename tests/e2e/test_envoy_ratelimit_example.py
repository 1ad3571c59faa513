"""The shipped edge rate-limit example: envoy.yaml's `#rl ` lines turned on validate with Envoy itself, and
their descriptors, ratelimit-config.yaml's and keygate's metadata (keygate.limits.edge) agree."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from keygate.limits.edge import ENVOY_UNITS

from .conftest import ROOT, SHIPPED, validate

RL_MARK = re.compile(r"^( *)#rl ", re.MULTILINE)  # how README turns the edge rate limits on
RATELIMIT_CONFIG = ROOT / "deploy" / "envoy" / "ratelimit-config.yaml"
NAMESPACE = "envoy.filters.http.ext_authz"


def with_rate_limits() -> str:
    return RL_MARK.sub(r"\1", SHIPPED.read_text())


def test_the_edge_rate_limit_lines_validate_with_envoy() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as config:
        config.write(with_rate_limits())
        config.flush()
        validate(Path(config.name))


def _manager(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def test_descriptors_metadata_and_the_ratelimit_config_agree() -> None:
    config = yaml.safe_load(with_rate_limits())
    manager = _manager(config)
    names = [f["name"] for f in manager["http_filters"]]
    assert names.index("envoy.filters.http.ext_authz") < names.index("envoy.filters.http.ratelimit") \
        < names.index("envoy.filters.http.router")  # after keygate has set the metadata
    (ratelimit,) = [f["typed_config"] for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ratelimit"]
    service = yaml.safe_load(RATELIMIT_CONFIG.read_text())
    assert ratelimit["domain"] == service["domain"]
    assert ratelimit["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"] in {
        c["name"] for c in config["static_resources"]["clusters"]}

    (host,) = manager["route_config"]["virtual_hosts"]
    sent = {}
    for entry in host["rate_limits"]:
        unit_action, key_action = (a["metadata"] for a in entry["actions"])
        assert {unit_action["metadata_key"]["key"], key_action["metadata_key"]["key"],
                entry["limit"]["dynamic_metadata"]["metadata_key"]["key"]} == {NAMESPACE}
        override = entry["limit"]["dynamic_metadata"]["metadata_key"]["path"][0]["key"]
        assert unit_action["metadata_key"]["path"] == [{"key": override}, {"key": "unit"}]
        assert key_action["metadata_key"]["path"] == [{"key": "key_id"}]
        assert unit_action["skip_if_absent"] and key_action["skip_if_absent"]
        sent[unit_action["descriptor_key"]] = (override, key_action["descriptor_key"])
    # keygate's metadata: rate_limit_<unit> for each of Envoy's units, whose `unit` is the descriptor value
    expected = {f"keygate_key_per_{u.lower()}": (f"rate_limit_{u.lower()}", "key_id") for u in ENVOY_UNITS.values()}
    assert sent == expected
    configured = {(d["key"], d["value"]): [n["key"] for n in d["descriptors"]] for d in service["descriptors"]}
    assert configured == {(f"keygate_key_per_{u.lower()}", u): ["key_id"] for u in ENVOY_UNITS.values()}
    # no limit configured: the override keygate's metadata supplies is the limit
    assert all("rate_limit" not in n for d in service["descriptors"] for n in d["descriptors"])


def test_the_shipped_file_keeps_them_off() -> None:
    config = yaml.safe_load(SHIPPED.read_text())
    assert "rate_limits" not in _manager(config)["route_config"]["virtual_hosts"][0]
