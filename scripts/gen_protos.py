#!/usr/bin/env python3
"""Generate the Python stubs for protos/flota/v1/*.proto; --check fails when they are stale.

This is the only generator of protos/flota/v1/*_pb2*.py{,i}. The stubs are committed.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "flota" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> list[Path]:
    """Run protoc for every .proto into `out` (mirroring the source tree) and list the outputs."""
    try:
        from grpc_tools import protoc
    except ImportError:  # pragma: no cover - an install problem, said plainly
        sys.exit("gen_protos: grpcio-tools is not installed (pip install -e '.[dev]')")
    import grpc_tools

    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    mypy_plugin = shutil.which("protoc-gen-mypy") or str(Path(sys.executable).parent / "protoc-gen-mypy")
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={mypy_plugin}",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_plugin}_grpc",
        *[str(p.relative_to(ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        sys.exit("gen_protos: protoc failed")
    return sorted(p for p in (out / "protos" / "flota" / "v1").iterdir() if p.name.endswith(SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            target = PROTO_DIR / path.name
            new = path.read_text()
            old = target.read_text() if target.exists() else ""
            if new == old:
                continue
            if opts.check:
                stale.append(path.name)
                sys.stdout.writelines(
                    list(
                        difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(target), "fresh")
                    )[:40]
                )
            else:
                shutil.copyfile(path, target)
                print(f"wrote {target.relative_to(ROOT)}")
        names = {p.name for p in fresh}
        extra = [p.name for p in PROTO_DIR.iterdir() if p.name.endswith(SUFFIXES) and p.name not in names]
        if opts.check and (stale or extra):
            print(
                f"gen_protos: stale stubs: {', '.join(stale + extra)}; run scripts/gen_protos.py",
                file=sys.stderr,
            )
            return 1
        for name in extra:
            (PROTO_DIR / name).unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
