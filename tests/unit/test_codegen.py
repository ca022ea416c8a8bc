"""The committed protocol code is exactly what proto/generate.py produces."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATOR = REPO_ROOT / "proto" / "generate.py"
COMMITTED = REPO_ROOT / "clients" / "python" / "bufbroker" / "v1"
FIX = "run `python proto/generate.py` and commit the result"


def load_generator():
    spec = importlib.util.spec_from_file_location("bufbroker_proto_generate", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_protocol_code_is_byte_identical_to_freshly_generated_code(tmp_path):
    generated = load_generator().generate(tmp_path)
    fresh = {path.name: path.read_bytes() for path in generated}
    committed = {path.name: path.read_bytes() for path in COMMITTED.iterdir() if path.is_file()}
    assert fresh, "proto/generate.py produced no files"
    assert sorted(fresh) == sorted(committed), (
        f"generated files {sorted(fresh)} differ from committed {sorted(committed)}; {FIX}"
    )
    stale = [name for name in sorted(fresh) if fresh[name] != committed[name]]
    assert not stale, f"committed protocol code is stale: {', '.join(stale)}; {FIX}"
