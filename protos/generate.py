"""Generate the Python stubs for protos/keygate/v1 into service/v1 (or into --out).

The stubs are committed so that an install needs no code generator; the test
suite runs this into a temporary directory and fails if the committed ones differ.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = Path("keygate") / "v1"
DEFAULT_OUT = PROTO_ROOT.parent / "service" / "v1"


def generate(out: Path) -> list[Path]:
    """Compile every .proto of keygate.v1 and copy the stubs into `out`."""
    sources = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(s.relative_to(PROTO_ROOT)) for s in sources),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the messages above")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for stub in sorted((Path(tmp) / PACKAGE_DIR).iterdir()):
            shutil.copyfile(stub, out / stub.name)
            written.append(out / stub.name)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    for path in generate(parser.parse_args(argv).out):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
