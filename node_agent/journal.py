"""What a node has been asked to run, on disk, until the coordinator has the result.

`<state>/jobs/<attempt>/spec.pb` is written before the job starts, `result.pb` when it
ends; the directory goes away when the coordinator acknowledges the result. So a
result produced while the coordinator was away is still there when it comes back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from google.protobuf.message import DecodeError

from protos.flota.v1 import types_pb2

__all__ = ["Journal"]


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Journal:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _dir(self, attempt_id: str) -> Path:
        return self.root / attempt_id

    def begin(self, spec: types_pb2.JobSpec) -> None:
        d = self._dir(spec.attempt_id)
        d.mkdir(exist_ok=True, mode=0o700)
        _write(d / "spec.pb", spec.SerializeToString())

    def started(self, attempt_id: str, process_group: int) -> None:
        _write(self._dir(attempt_id) / "pgid", str(process_group).encode())

    def process_group(self, attempt_id: str) -> int:
        """The process group an unfinished attempt ran in, or 0 when unknown."""
        try:
            return int((self._dir(attempt_id) / "pgid").read_text())
        except (OSError, ValueError):
            return 0

    def finish(self, result: types_pb2.JobResult) -> None:
        _write(self._dir(result.attempt_id) / "result.pb", result.SerializeToString())

    def forget(self, attempt_id: str) -> None:
        if attempt_id and "/" not in attempt_id and attempt_id not in (".", ".."):
            shutil.rmtree(self._dir(attempt_id), ignore_errors=True)

    def entries(self) -> list[tuple[types_pb2.JobSpec, types_pb2.JobResult | None]]:
        """Every journaled attempt: (spec, result or None while unfinished)."""
        found = []
        for d in sorted(self.root.iterdir()):
            try:
                spec = types_pb2.JobSpec.FromString((d / "spec.pb").read_bytes())
            except (OSError, ValueError, DecodeError):
                continue
            result = None
            if (d / "result.pb").exists():
                try:
                    result = types_pb2.JobResult.FromString((d / "result.pb").read_bytes())
                except (OSError, ValueError, DecodeError):
                    result = None
            found.append((spec, result))
        return found
