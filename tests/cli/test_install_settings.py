"""What `flota node add` writes for the node (its node.toml), read back by the node's own
config loader: the flags reach the installed daemon."""

from __future__ import annotations

from pathlib import Path

from cli.install.add import AddArgs, node_toml
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
