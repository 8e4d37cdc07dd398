"""cli/config.py: the user's ~/.config/flota/config.toml, through the real CLI (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fleet import Fleet


def _config(tmp_path: Path, text: str) -> dict[str, str]:
    home = tmp_path / "xdg"
    (home / "flota").mkdir(parents=True, exist_ok=True)
    (home / "flota" / "config.toml").write_text(text)
    return {"XDG_CONFIG_HOME": str(home)}


def test_defaults_from_the_file_and_what_overrides_them(fleet: Fleet, tmp_path: Path) -> None:
    api = fleet.start_coordinator()["api"]
    env = _config(tmp_path, f'coordinator = "{api}"\noutput = "json"\n[run]\nname = "from-config"\n')
    run = json.loads(fleet.flota("run", "echo hi", env=env, check=True).stdout)  # JSON: from the file
    assert run["name"] == "from-config"
    named = json.loads(fleet.flota("run", "--name", "flag", "echo hi", env=env, check=True).stdout)
    assert named["name"] == "flag"  # a flag wins
    text = fleet.flota("status", "--text", env=env, check=True).stdout
    assert "from-config" in text and not text.lstrip().startswith("[")

    # The address: --coordinator, then $FLOTA_COORDINATOR, then the file, then admin/coordinator.
    dead = _config(tmp_path, 'coordinator = "127.0.0.1:9"\n')
    refused = fleet.flota("status", env=dead)
    assert refused.returncode == 3 and "cannot reach the coordinator at 127.0.0.1:9" in refused.stderr
    assert fleet.flota("status", env={**dead, "FLOTA_COORDINATOR": api}).returncode == 0
    assert fleet.flota("--coordinator", api, "status", env=dead).returncode == 0


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[runn]\nx = 1\n", "unknown setting or command 'runn' (see: flota --help)"),
        ("[run]\nmax-step = 3\n", "unknown command or option 'run.max-step' (see: flota run --help)"),
        ('[run]\nmax-steps = "many"\n', "run.max-steps: "),
        ("[run]\nfollow = 1\n", "run.follow is a flag: true or false"),
        ("[node]\nslots = 2\n", "unknown command or option 'node.slots' (see: flota node --help)"),
        ('output = "yaml"\n', 'output must be "json" or "text", not \'yaml\''),
        ('coordinator = "not an address"\n', "malformed coordinator in "),
        ("x = [\n", "config.toml: "),
    ],
)
def test_a_bad_file_is_one_line_naming_it(fleet: Fleet, tmp_path: Path, text: str, said: str) -> None:
    result = fleet.flota("status", env=_config(tmp_path, text))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("flota: "), result.stderr
    assert said in result.stderr, result.stderr
    assert "config.toml" in result.stderr


def test_nested_tables_reach_a_group_command(fleet: Fleet, tmp_path: Path) -> None:
    """[token.create] ttl: the command takes it as if given on the command line."""
    fleet.start_coordinator()
    refused = fleet.flota("token", "create", env=_config(tmp_path, "[token.create]\nttl = 5\n"))
    assert refused.returncode == 2 and "--ttl must be between 10 s and 7 days" in refused.stderr, (
        refused.stderr
    )


def test_flota_config_names_the_file(fleet: Fleet, tmp_path: Path) -> None:
    missing = fleet.flota("status", env={"FLOTA_CONFIG": str(tmp_path / "nope.toml")})
    assert missing.returncode == 2 and "no such config file" in missing.stderr
