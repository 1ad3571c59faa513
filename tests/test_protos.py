"""The committed stubs in service/v1 and Envoy's descriptor set are exactly what `make proto` generates."""

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
COMMITTED_DESCRIPTORS = ROOT / "deploy" / "envoy" / "keygate.pb"


def _generate(tmp_path: Path) -> tuple[Path, Path]:
    stubs, descriptors = tmp_path / "stubs", tmp_path / "keygate.pb"
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(stubs),
                    "--descriptors", str(descriptors)], check=True, capture_output=True)
    return stubs, descriptors


def _files(path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    return {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file}


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    stubs, _ = _generate(tmp_path)
    committed = ROOT / "service" / "v1"
    generated = sorted(p.name for p in stubs.iterdir())
    assert generated, "the generator wrote nothing"
    stale = [name for name in generated if (committed / name).read_bytes() != (stubs / name).read_bytes()]
    assert not stale, f"stale stubs {stale}: run `make proto` and commit the result"


def test_committed_descriptor_set_matches_the_protos(tmp_path: Path) -> None:
    """keygate's own files byte for byte; the imported google/* files by name (their content is the
    installed googleapis-common-protos' and protobuf's, which a newer release may reword)."""
    _, descriptors = _generate(tmp_path)
    generated, committed = _files(descriptors), _files(COMMITTED_DESCRIPTORS)
    assert sorted(generated) == sorted(committed), "run `make proto` and commit deploy/envoy/keygate.pb"
    own = [name for name in generated if name.startswith("keygate/")]
    assert own == ["keygate/v1/flowise.proto"]
    stale = [n for n in own if generated[n].SerializeToString() != committed[n].SerializeToString()]
    assert not stale, f"stale descriptors {stale}: run `make proto` and commit deploy/envoy/keygate.pb"
    assert "google/rpc/error_details.proto" in committed, "Envoy needs it to render keygate's error details"
