"""Generate the Python stubs for protos/keygate/v1 into service/v1, and Envoy's descriptor set
deploy/envoy/keygate.pb (or both into --out).

The stubs are committed so that an install needs no code generator, and the descriptor set so that
Envoy's gRPC-JSON transcoder (deploy/envoy/envoy.yaml) runs from a checkout; the test suite runs
this into a temporary directory and fails if the committed files differ.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

import google.api
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = Path("keygate") / "v1"
DEFAULT_OUT = PROTO_ROOT.parent / "service" / "v1"
DEFAULT_DESCRIPTORS = PROTO_ROOT.parent / "deploy" / "envoy" / "keygate.pb"
# What the transcoder serves, and the error details keygate's statuses carry (so that Envoy can
# render them into the JSON error body). --include_imports adds google/api/*, google/protobuf/*.
TRANSCODED = ("keygate/v1/flowise.proto", "google/rpc/error_details.proto")
# google/api/*.proto and google/rpc/*.proto ship in googleapis-common-protos, next to their _pb2 modules.
GOOGLEAPIS = Path(google.api.__file__).resolve().parents[2]


def _protoc(*args: str) -> None:
    well_known = resources.files("grpc_tools") / "_proto"
    if protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"-I{GOOGLEAPIS}", *args]) != 0:
        raise SystemExit("protoc failed; see the messages above")


def generate(out: Path) -> list[Path]:
    """Compile every .proto of keygate.v1 and copy the stubs into `out`."""
    sources = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        _protoc(f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}",
                *(str(s.relative_to(PROTO_ROOT)) for s in sources))
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for stub in sorted((Path(tmp) / PACKAGE_DIR).iterdir()):
            shutil.copyfile(stub, out / stub.name)
            written.append(out / stub.name)
    return written


def descriptor_set(out: Path) -> Path:
    """Write the FileDescriptorSet Envoy's transcoder loads (`proto_descriptor`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _protoc(f"--descriptor_set_out={out}", "--include_imports", *TRANSCODED)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the stubs")
    parser.add_argument("--descriptors", type=Path, default=DEFAULT_DESCRIPTORS, help="the descriptor set's path")
    args = parser.parse_args(argv)
    for path in (*generate(args.out), descriptor_set(args.descriptors)):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
