"""Generate the Python stubs in lipsync/protos from the .proto files in proto/.

Run from anywhere after installing the test extras (which bring grpcio-tools):

    python scripts/generate_protos.py

The .proto files are compiled under the virtual path lipsync/protos/, so the generated gRPC
modules import their message modules as `lipsync.protos.<name>_pb2` without any rewriting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
PACKAGE_PATH = "lipsync/protos"


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Compile every .proto in proto_dir into out_dir/lipsync/protos and return the files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(proto_dir.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files found in {proto_dir}")

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PACKAGE_PATH}={proto_dir}",
        f"--proto_path={include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see its output above")

    generated = out_dir / PACKAGE_PATH
    return sorted(generated.glob("*_pb2*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT,
        help="root to write lipsync/protos/ under (default: the repository root)",
    )
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))


if __name__ == "__main__":
    sys.exit(main())
