"""The wheelhouse `flota node add` ships, built for real from this machine's package index
into an empty cache: flota's wheel from its source, and the node's packages for the host's
platform (here: this machine's own Python, as the preflight probe sees it)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cli.client import CliError
from cli.install import preflight, wheelhouse
from cli.install.preflight import Facts, Python

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where the CLI's cache goes
    return tmp_path / "cache" / "flota"


def _here() -> tuple[Facts, Python]:
    probe = subprocess.run(
        ["sh", "-s"], input=preflight.probe_script(sys.executable), capture_output=True, text=True
    )
    facts = preflight.parse(probe.stdout)
    assert facts.python is not None, probe
    return facts, facts.python


def test_a_wheelhouse_from_nothing_then_from_the_cache(cache: Path) -> None:
    facts, py = _here()
    first = wheelhouse.build(facts, py, (), online=False)
    assert not first.cached and first.flota.is_relative_to(cache)
    names = {p.name.split("-")[0].lower().replace("_", "-") for p in first.files()}
    assert {"flota", "pip", *wheelhouse.NODE_PACKAGES} <= names
    assert "litellm" not in names, "the node daemon does not need litellm"
    assert 1_000_000 < first.size < 100_000_000, first.size
    with zipfile.ZipFile(first.flota) as whl:
        assert "node_agent/__main__.py" in whl.namelist() and "protos/contract.py" in whl.namelist()
    assert first.build == wheelhouse.source_hash(wheelhouse.source_root())

    again = wheelhouse.build(facts, py, (), online=False)
    assert again.cached and again.files() == first.files()


def test_online_ships_only_flota_and_pip(cache: Path) -> None:
    facts, py = _here()
    wh = wheelhouse.build(facts, py, (), online=True)
    assert sorted(p.name.split("-")[0] for p in wh.files()) == ["flota", "pip"]


def test_a_platform_the_index_has_no_wheels_for_names_the_package_and_online(cache: Path) -> None:
    facts, py = _here()
    odd = Python(py.path, py.version, py.impl, ("glibc", "2.36"), "", "m68k", True)
    with pytest.raises(CliError) as err:
        wheelhouse.build(Facts(**{**facts.__dict__, "arch": "m68k"}), odd, (), online=False)
    message = str(err.value)
    assert message.startswith("this machine's package index has no wheel of ")
    assert f"for the host (Linux m68k, CPython {py.short}, glibc 2.36): pass --online" in message
    assert not list((cache / "wheelhouse").glob("*/.complete"))


def test_with_llm_adds_litellm_pinned_to_what_runs_here() -> None:
    import importlib.metadata

    reqs = wheelhouse.requirements(("llm",), online=False)
    assert f"litellm=={importlib.metadata.version('litellm')}" in reqs
    assert not any(r.startswith("litellm") for r in wheelhouse.requirements((), online=False))
    assert os.path.basename(wheelhouse.cache_dir()) == "flota"
