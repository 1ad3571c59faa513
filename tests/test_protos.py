"""The committed stubs in service/v1 are exactly what `make proto` generates from protos/."""

import subprocess
import sys
from pathlib import Path


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, str(root / "protos" / "generate.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    committed = root / "service" / "v1"
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated, "the generator wrote nothing"
    stale = [name for name in generated if (committed / name).read_bytes() != (tmp_path / name).read_bytes()]
    assert not stale, f"stale stubs {stale}: run `make proto` and commit the result"
