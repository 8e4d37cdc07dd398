"""What docs/cli.md tells users, read by tests that keep it true."""

from __future__ import annotations

import re
from pathlib import Path

CLI_MD = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def documented_keys(section: str) -> set[str]:
    """The keys in the first column of the table under `## <section>` in docs/cli.md."""
    table = CLI_MD.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    return {key for first in rows for key in re.findall(r"`([a-z_]+)`", first)}
