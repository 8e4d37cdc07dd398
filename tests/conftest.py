from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import Fleet

# Importing `cli` quiets gRPC for the CLI's own process (GRPC_VERBOSITY=NONE). Tests import
# it in-process; without this, every daemon started after them would inherit the quiet and
# lose gRPC's own errors from its log (which the security tests read).
_GRPC_VERBOSITY = os.environ.get("GRPC_VERBOSITY")


@pytest.fixture(autouse=True, scope="session")
def _no_user_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CLI reads the user's ~/.config/flota/config.toml: tests (and every process they
    start) see an empty config home instead, unless a test sets its own."""
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config-home"))
    os.environ.pop("FLOTA_CONFIG", None)


@pytest.fixture(autouse=True)
def _daemons_keep_grpc_errors() -> Iterator[None]:
    yield
    if _GRPC_VERBOSITY is None:
        os.environ.pop("GRPC_VERBOSITY", None)
    else:
        os.environ["GRPC_VERBOSITY"] = _GRPC_VERBOSITY


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        yield f
    finally:
        f.close()
