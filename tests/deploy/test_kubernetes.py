"""deploy/k8s: valid against the Kubernetes schemas (offline, those kubernetes-validate bundles), and
consistent with the code: ports, the variables set, the health service names, the shutdown grace."""

from __future__ import annotations

import copy
import functools
from importlib import metadata
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from keygate.config import DEFAULT_LISTEN, Settings
from keygate.metrics import DEFAULT_ADDRESS as DEFAULT_METRICS
from keygate.server import SERVICE_NAMES

from .sources import K8S, documents, manifests, port, variables_read

# The oldest release the manifests use a feature of (the preStop `sleep` action), and the newest bundled.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def deployment() -> dict[str, Any]:
    return manifests()[("Deployment", "keygate")]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def config() -> dict[str, str]:
    return manifests()[("ConfigMap", "keygate")]["data"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    """Strict: a misspelt field is an error, not silently ignored as the API server would."""
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    wrong = copy.deepcopy(deployment())
    container(wrong)["readynessProbe"] = container(wrong).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in FILES if p.name != "secret.example.yaml")


def test_ports_are_keygate_defaults_everywhere() -> None:
    objects, grpc_port, metrics_port = manifests(), port(DEFAULT_LISTEN), port(DEFAULT_METRICS)
    assert port(config()["KEYGATE_LISTEN"]) == grpc_port
    assert port(config()["KEYGATE_METRICS"]) == metrics_port
    ports = {p["name"]: p["containerPort"] for p in container(deployment())["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    service = {p["name"]: p for p in objects[("Service", "keygate")]["spec"]["ports"]}
    assert {name: (p["port"], ports[p["targetPort"]]) for name, p in service.items()} == {
        "grpc": (grpc_port, grpc_port), "metrics": (metrics_port, metrics_port)}
    policy = objects[("NetworkPolicy", "keygate")]["spec"]["ingress"]
    assert [rule["ports"][0]["port"] for rule in policy] == [grpc_port, metrics_port]
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container(deployment())[probe]["grpc"]["port"] == grpc_port


def test_probes_ask_for_the_health_services_keygate_registers() -> None:
    probes = {name: container(deployment())[name]["grpc"]["service"]
              for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": "", "livenessProbe": "", "readinessProbe": "keygate.v1.AuthzService"}
    assert probes["readinessProbe"] in SERVICE_NAMES


def variables_set(workload: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container(workload).get("env", [])}


def test_every_variable_set_is_one_keygate_reads() -> None:
    objects = manifests()
    set_somewhere = set(config()) | variables_set(deployment()) | variables_set(objects[("Job", "keygate-migrate")])
    assert set_somewhere - variables_read() == set()


def test_every_value_set_is_one_keygate_accepts() -> None:
    """A value keygate refuses would stop every pod at start (the access log's retired `on`, say)."""
    Settings.from_env(config())


def test_the_database_url_comes_from_the_secret_only() -> None:
    objects = manifests()
    secret = objects[("Secret", "keygate-database")]
    assert "DATABASE_URL" not in config()
    for workload in (deployment(), objects[("Job", "keygate-migrate")]):
        (entry,) = [e for e in container(workload)["env"] if e["name"] == "DATABASE_URL"]
        assert entry["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "DATABASE_URL"}
        assert container(workload)["envFrom"] == [{"configMapRef": {"name": "keygate"}}]


def test_in_flight_calls_finish_before_the_kubelet_kills() -> None:
    spec = deployment()["spec"]["template"]["spec"]
    pause = container(deployment())["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pause + float(config()["KEYGATE_SHUTDOWN_GRACE"])


@pytest.mark.parametrize("name", ["Deployment/keygate", "Job/keygate-migrate"])
def test_pods_run_unprivileged_on_a_read_only_root(name: str) -> None:
    workload = manifests()[tuple(name.split("/"))]
    pod = workload["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    one = container(workload)
    assert one["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                      "capabilities": {"drop": ["ALL"]}}
    assert one["resources"]["requests"].keys() == {"cpu", "memory"} and "memory" in one["resources"]["limits"]
    assert one["image"] == f"keygate:{metadata.version('keygate')}"


def test_the_objects_select_the_server_pods() -> None:
    objects = manifests()
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    spec = deployment()["spec"]
    selectors = {
        "deployment": spec["selector"]["matchLabels"],
        "service": objects[("Service", "keygate")]["spec"]["selector"],
        "disruption budget": objects[("PodDisruptionBudget", "keygate")]["spec"]["selector"]["matchLabels"],
        "anti-affinity": spec["template"]["spec"]["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["labelSelector"]["matchLabels"],
    }
    for what, selector in selectors.items():
        assert selector.items() <= labels.items(), what
    migrate_labels = objects[("Job", "keygate-migrate")]["spec"]["template"]["metadata"]["labels"]
    assert not selectors["service"].items() <= migrate_labels.items()  # the Service never routes to the Job
    autoscaler = objects[("HorizontalPodAutoscaler", "keygate")]["spec"]
    assert autoscaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "keygate"}
    budget = objects[("PodDisruptionBudget", "keygate")]["spec"]["minAvailable"]
    assert spec["replicas"] >= 2 and autoscaler["minReplicas"] >= 2 and budget < autoscaler["minReplicas"]


# --- the variants: TLS (deploy/k8s/tls) and the mesh (deploy/istio) -------------------------------


def json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 as kustomize applies the overlay's patches: the two operations it uses, `add` (to a
    mapping, or `-` appending to a list) and `replace` (of what exists)."""
    patched = copy.deepcopy(document)
    for op in operations:
        *parents, last = op["path"].split("/")[1:]
        target = functools.reduce(lambda t, part: t[int(part)] if isinstance(t, list) else t[part], parents, patched)
        if isinstance(target, list):
            assert (op["op"], last) == ("add", "-"), op
            target.append(op["value"])
        else:
            assert op["op"] == "add" or (op["op"] == "replace" and last in target), op
            target[last] = op["value"]
    return patched


def overlay(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """deploy/<name>'s kustomization applied to the base: its namespace set and its patches applied."""
    directory = K8S.parent / name
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert [(directory / r).resolve() for r in kustomization["resources"]] == [K8S]
    objects = manifests()
    del objects[("Secret", "keygate-database")]  # an example, not applied
    for entry in kustomization["patches"]:
        key = (entry["target"]["kind"], entry["target"]["name"])
        objects[key] = json_patch(objects[key], yaml.safe_load((directory / entry["path"]).read_text()))
    if "namespace" in kustomization:
        objects = {key: {**doc, "metadata": {**doc["metadata"], "namespace": kustomization["namespace"]}}
                   for key, doc in objects.items()}
    for doc in objects.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    return objects


def test_the_tls_variant_is_valid_and_probes_with_keygate_health() -> None:
    objects = overlay("k8s/tls")
    served = container(objects[("Deployment", "keygate")])
    probes = {name: served[name]["exec"]["command"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": ["keygate", "health"], "livenessProbe": ["keygate", "health"],
                      "readinessProbe": ["keygate", "health", "--service", "keygate.v1.AuthzService"]}
    data = objects[("ConfigMap", "keygate")]["data"]
    # The probes dial localhost; the certificate names the Service, so that is the name they check.
    assert data["KEYGATE_TLS_SERVER_NAME"] == objects[("Service", "keygate")]["metadata"]["name"]
    files = {v for k, v in data.items() if k.startswith("KEYGATE_TLS_") and k != "KEYGATE_TLS_SERVER_NAME"}
    (mount,) = [m for m in served["volumeMounts"] if m["name"] == "tls"]
    assert mount["readOnly"] and all(Path(f).parent == Path(mount["mountPath"]) for f in files) and files
    volumes = objects[("Deployment", "keygate")]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "keygate-tls", "defaultMode": 0o440}} in volumes
    assert set(objects[("ConfigMap", "keygate")]["data"]) - variables_read() == set()


def test_the_mesh_variant_is_valid_and_its_migration_job_can_finish() -> None:
    objects = overlay("istio")
    assert {doc["metadata"]["namespace"] for doc in objects.values()} == {"keygate"}
    job = objects[("Job", "keygate-migrate")]["spec"]["template"]["metadata"]
    assert job["annotations"] == {"sidecar.istio.io/inject": "false"}  # a sidecar would outlive `migrate`
    egress = objects[("NetworkPolicy", "keygate")]["spec"]["egress"]
    assert {p["port"] for rule in egress for p in rule["ports"]} == {5432, 53, 15012}


def test_the_upstream_variant_is_valid_and_mounts_the_credentials_it_names() -> None:
    objects = overlay("k8s/upstream")
    served = container(objects[("Deployment", "keygate")])
    path = Path(objects[("ConfigMap", "keygate")]["data"]["KEYGATE_UPSTREAM_CREDENTIALS"])
    (mount,) = [m for m in served["volumeMounts"] if m["name"] == "upstream"]
    assert mount["readOnly"] and path.parent == Path(mount["mountPath"])
    volumes = objects[("Deployment", "keygate")]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "upstream", "secret": {"secretName": "keygate-upstream", "defaultMode": 0o440}} in volumes
    assert set(objects[("ConfigMap", "keygate")]["data"]) - variables_read() == set()
