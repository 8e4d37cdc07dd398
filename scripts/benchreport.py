"""What every bench script does at its end: print its table, aligned, and write the
figures as JSON when asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(table: list[tuple[str, str]], report: dict[str, Any], json_path: Path | None = None) -> None:
    width = max((len(name) for name, _ in table), default=0)
    for name, value in table:
        print(f"{name:{width}s}  {value}")
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
