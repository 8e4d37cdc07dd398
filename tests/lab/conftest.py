"""Fixtures for the multi-host lab (tests/lab). Needs root; never skips: CI runs as root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, LabUnavailable, cleanup_stale


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()) or here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session", autouse=True)
def _lab_stale_cleanup() -> None:
    """Remove namespaces left by crashed earlier runs (only labs whose creator is dead)."""
    cleanup_stale()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A fresh :class:`Lab`; always torn down (failure, KeyboardInterrupt, atexit backstop).

    Host directories live under ``tmp_path/lab/<host>`` so pytest keeps them for inspection.
    """
    try:
        the_lab = Lab(workdir=tmp_path / "lab")
    except LabUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield the_lab
    finally:
        the_lab.close()
