"""Generates the gRPC stubs of the Baton API from ../../proto into baton_sdk/_gen.

Run with the interpreter that has grpcio-tools installed:

    python sdk/python/generate.py [--proto-dir DIR]

protoc writes `from baton.v1 import types_pb2`-style imports; they are
rewritten to `baton_sdk._gen.baton.v1` so the stubs live inside the package
and never shadow another `baton` module. The well-known types
(google/protobuf/*.proto) come from grpc_tools' bundled copies; their Python
modules are part of the protobuf runtime.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = HERE / "baton_sdk"
GENERATED_DIR = PACKAGE_DIR / "_gen"
DEFAULT_PROTO_DIR = HERE.parent.parent / "proto"
IMPORT_PATTERN = re.compile(r"^from baton\.v1 import ", re.MULTILINE)


def generate(proto_dir: Path) -> None:
    from grpc_tools import protoc
    import grpc_tools

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    protos = sorted(str(path) for path in (proto_dir / "baton" / "v1").glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir / 'baton' / 'v1'}")
    with tempfile.TemporaryDirectory(dir=PACKAGE_DIR) as scratch:
        out = Path(scratch) / "_gen"
        out.mkdir()
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={proto_dir}",
                f"--proto_path={well_known}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                *protos,
            ]
        )
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        for package in (out, out / "baton", out / "baton" / "v1"):
            (package / "__init__.py").touch()
        for module in (out / "baton" / "v1").glob("*.py*"):
            text = module.read_text()
            module.write_text(IMPORT_PATTERN.sub("from baton_sdk._gen.baton.v1 import ", text))
        shutil.rmtree(GENERATED_DIR, ignore_errors=True)
        out.rename(GENERATED_DIR)
    print(f"generated {len(protos)} protos into {GENERATED_DIR}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-dir", type=Path, default=DEFAULT_PROTO_DIR)
    args = parser.parse_args()
    generate(args.proto_dir.resolve())


if __name__ == "__main__":
    main()
