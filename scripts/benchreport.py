"""What every bench script does at its end: print its table, aligned, and write the
figures as JSON when asked."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def emit(table: list[tuple[str, str]], report: dict[str, Any], json_path: Path | None = None) -> None:
    width = max((len(name) for name, _ in table), default=0)
    for name, value in table:
        print(f"{name:{width}s}  {value}")
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


def main(
    doc: str | None,
    run: Callable[[bool], dict[str, Any]],
    rows: Callable[[dict[str, Any]], list[tuple[str, str]]],
    quick: str,
) -> int:
    """A bench script's command line: `--quick` (what it does: `quick`) and `--json PATH`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    opts = parser.parse_args()
    report = run(opts.quick)
    emit(rows(report), report, opts.json)
    return 0
