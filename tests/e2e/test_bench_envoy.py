"""bench/envoy.py's ext_authz variants, built from the shipped envoy.yaml: valid Envoy configurations carrying
the shipped keygate cluster, and both authz servers answering its health check, so that keygate (c) and the
constant-allow server (c0) are compared under the same health-check traffic."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import constant_ext_authz
from bench import envoy as bench_envoy

from .conftest import free_port, keygate_cluster, shipped_config, validate


def health_service() -> str:
    (check,) = keygate_cluster(shipped_config())["health_checks"]
    return str(check["grpc_health_check"]["service_name"])


@pytest.mark.parametrize("variant", ["c0", "c"])
def test_the_ext_authz_variants_validate_with_the_shipped_keygate_cluster(variant: str, tmp_path: Path) -> None:
    config = bench_envoy.config(variant, listen=free_port(), admin=free_port(), api_key="k", authz_port=free_port())
    cluster = keygate_cluster(config)
    shipped = keygate_cluster(shipped_config())
    assert {k: v for k, v in cluster.items() if k != "load_assignment"} == {
        k: v for k, v in shipped.items() if k != "load_assignment"}
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    validate(path)


async def test_the_constant_server_answers_the_shipped_health_check() -> None:
    server = grpc.aio.server()
    await constant_ext_authz.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=health_service()), timeout=5)
    finally:
        await server.stop(0)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
