"""How the CLI reads to a user before any daemon answers: help, flags, malformed input
(issue 14, defects 11, 12 and 13)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import _build_command
from tests.fleet import Fleet

TYPE_MARKER = re.compile(r"<[a-z][a-z\[\], ]*>")  # typer's `<str>`, `<bool>`, `<list[str]>`


def _paths() -> list[list[str]]:
    """Every command of the tree, as the words that name it (`[]` is `flota` itself)."""
    found: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(_build_command(), [])
    return found


def _flota(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return Fleet(home).flota(*args, env={"COLUMNS": "200"}, timeout=60)


def _help(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        _build_command().main(args=args, prog_name="flota", standalone_mode=True)
    assert exit_info.value.code == 0, args
    return capsys.readouterr().out


def test_dash_h_is_help_everywhere_and_metavars_read_well(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _paths()
    assert ["node", "start"] in paths and ["logs"] in paths and len(paths) > 20
    for path in paths:
        short = _help([*path, "-h"], capsys, monkeypatch)
        assert short == _help([*path, "--help"], capsys, monkeypatch), path
        assert "Usage: flota" in short, path
        assert not TYPE_MARKER.search(short), f"flota {' '.join(path)} -h: {TYPE_MARKER.findall(short)}"


def _daemon_flags(parser: argparse.ArgumentParser) -> set[str]:
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    start = subs.choices["start"]
    return {opt for action in start._actions for opt in action.option_strings if opt.startswith("--")}


def test_start_help_lists_every_option_the_daemon_takes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator.__main__ import _parser as coordinator_parser
    from node_agent.__main__ import _parser as node_parser

    for path, parser in (
        (["node", "start"], node_parser()),
        (["coordinator", "start"], coordinator_parser()),
    ):
        text = _help([*path, "-h"], capsys, monkeypatch)
        flags = _daemon_flags(parser) - {"--help", "--json"}  # --json is flota's global flag
        assert {"--listen", "--no-mdns"} <= flags
        missing = {flag for flag in flags if not re.search(re.escape(flag) + r"\b", text)}
        assert not missing, f"flota {' '.join(path)} -h lacks {sorted(missing)}"
    node_help = _help(["node", "start", "-h"], capsys, monkeypatch)
    for flag in ("--allow-remote", "--agent-cli", "--model-server"):
        assert flag in node_help


def test_unknown_flags_are_one_clear_error_exit_2(tmp_path: Path) -> None:
    for args in (["node", "start", "--bogus"], ["coordinator", "start", "--bogus"]):
        out = _flota(*args, home=tmp_path)
        assert out.returncode == 2, out
        assert "No such option: --bogus" in out.stderr and "usage:" not in out.stderr, out.stderr
    # The daemons' own entry points, run directly, say it in one `flota:` line too.
    for module in ("node_agent", "coordinator"):
        out = subprocess.run(
            [sys.executable, "-m", module, "start", "--bogus"],
            capture_output=True,
            text=True,
            timeout=60,
            env=Fleet(tmp_path).env,
        )
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("flota: ") and "--bogus" in lines[0], out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--coordinator", "not an address:7370", "nodes"],
        ["--coordinator", "host-without-port", "status"],
        ["--coordinator", "999.1.2.3:7370", "nodes"],
        ["--coordinator", "ex_ample.org:70000", "nodes"],
        ["node", "start", "--listen", "bad host:7380"],
        ["node", "start", "--coordinator", "-x:1"],
        ["coordinator", "start", "--listen", "1.2.3:x"],
        ["node", "join", "a..b:7371", "--token", "flota1.abcdef01." + "A" * 20 + "." + "0" * 64],
    ],
)
def test_malformed_addresses_are_refused_before_any_resolver(args: list[str], tmp_path: Path) -> None:
    out = _flota(*args, home=tmp_path)
    assert out.returncode == 2, out
    assert out.stderr.startswith("flota: malformed ") and len(out.stderr.strip().splitlines()) == 1, (
        out.stderr
    )


def test_malformed_coordinator_from_the_environment_is_refused(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    out = fleet.flota("nodes", env={"FLOTA_COORDINATOR": "no such:host:1"}, timeout=60)
    assert out.returncode == 2 and "malformed $FLOTA_COORDINATOR" in out.stderr, out.stderr


@pytest.mark.parametrize("ttl", ["0", "9", "604801", "-5"])
def test_token_ttl_out_of_range_is_refused(ttl: str, tmp_path: Path) -> None:
    out = _flota("token", "create", "--ttl", ttl, home=tmp_path)
    assert out.returncode == 2, out
    assert (
        out.stderr.strip() == f"flota: --ttl must be between 10 s and 7 days (604800 s), not {float(ttl):g}"
    )


def test_version_flag_needs_no_coordinator(tmp_path: Path) -> None:
    from cli import __version__

    out = _flota("--version", home=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"flota {__version__}"


def test_shell_completion_is_offered(tmp_path: Path) -> None:
    script = _flota("--show-completion", "bash", home=tmp_path)
    assert script.returncode == 0 and "_FLOTA_COMPLETE" in script.stdout, script
    # What bash asks when the user types `flota no<TAB>`.
    asked = {"_FLOTA_COMPLETE": "complete_bash", "COMP_WORDS": "flota no", "COMP_CWORD": "1"}
    words = Fleet(tmp_path).flota(env=asked, timeout=60).stdout.split()
    assert words == ["nodes", "node"], words


def test_an_address_not_on_this_machine_is_one_line(tmp_path: Path) -> None:
    # 192.0.2.1 is TEST-NET-1: never a local address. gRPC's own refusal would log a C-core line.
    for args in (
        ["coordinator", "start", "--no-mdns", "--listen", "192.0.2.1:7399"],
        ["node", "start", "--no-mdns", "--state-dir", str(tmp_path / "node"), "--listen", "192.0.2.1:7399"],
    ):
        out = _flota(*args, home=tmp_path)
        assert out.returncode == 2, out
        assert out.stderr == "flota: cannot listen on 192.0.2.1:7399: no such address on this machine\n", (
            out.stderr
        )
