"""What `flota node add` writes for the node (its node.toml), read back by the node's own
config loader: the flags reach the installed daemon."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli.install.add import AddArgs, node_toml
from cli.install.service import Layout, resume_commands, service_file, start_commands
from cli.install.ssh import SshOptions
from node_agent.config import load_config


def _args(**kw: object) -> AddArgs:
    return AddArgs(target="u@10.0.0.7", ssh=SshOptions(), **kw)  # type: ignore[arg-type]


def test_dial_home_reaches_the_installed_node(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(node_toml("lap", _args(dial_home=True, network="home", slots=2)))
    config = load_config(tmp_path)
    assert config.dial_home is True
    assert (config.name, config.network, config.slots) == ("lap", "home", 2)


def test_without_dial_home_the_node_is_dialed(tmp_path: Path) -> None:
    text = node_toml("lap", _args(labels=(("gpu", "no"),)))
    assert "dial_home" not in text
    (tmp_path / "node.toml").write_text(text)
    config = load_config(tmp_path)
    assert config.dial_home is False and config.labels == {"gpu": "no"}


def test_upgrade_names_one_node_or_all() -> None:
    for args in ([], ["box", "--all"]):
        ran = subprocess.run(
            [sys.executable, "-m", "cli", "node", "upgrade", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 2 and ran.stderr == "flota: name one node to upgrade, or pass --all\n", ran


def test_after_the_keep_jobs_stop_each_service_is_started_again() -> None:
    layout = Layout("/home/u", "u", "501", "/home/u/.local/share/flota")
    unit = service_file("systemd", layout)
    assert resume_commands("systemd", layout, unit)[-1] == "systemctl --user restart flota-node.service"
    plist = service_file("launchd", layout)
    assert resume_commands("launchd", layout, plist) == ["launchctl kickstart -k gui/501/dev.flota.node"]
    assert resume_commands("none", layout, "") == start_commands("none", layout, "")
