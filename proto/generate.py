"""Regenerate the Python protocol code from proto/ into the SDK.

Usage: python proto/generate.py [OUT_DIR]

OUT_DIR defaults to clients/python (the code lands in bufbroker/v1/ below
it). The generated files are committed; tests/unit/test_codegen.py runs this
into a temp dir and fails if the committed files differ, so edit a .proto,
run this, and commit both.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
DEFAULT_OUT = REPO_ROOT / "clients" / "python"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "bufbroker" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto; return the files written under out_dir."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    package_dir = out_dir / "bufbroker" / "v1"
    package_dir.mkdir(parents=True, exist_ok=True)
    relative = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *relative,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    init = package_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protocol code (see proto/generate.py)."""\n')
    return sorted(p for p in package_dir.iterdir() if p.is_file())


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path)
