"""The user's own defaults for the CLI: `~/.config/flota/config.toml`.

```toml
coordinator = "192.168.1.10:7370"   # after --coordinator and $FLOTA_COORDINATOR
output = "json"                     # or "text" (the default); --json / --text win

[run]                               # any long option of a command, by its flag name
agent = "llm"
model = ["ollama/qwen2.5-coder"]
max-steps = 30

[node.start]                        # a group's command is a nested table
slots = 2
```

The file is read once per invocation and checked against the command tree before any
command runs: an unknown table or key, or a value the option would refuse, is one line
naming the file and the key, never a silent typo. Values become click's `default_map`, so
a flag on the command line still wins.
Its path: $FLOTA_CONFIG, else $XDG_CONFIG_HOME/flota/config.toml, else ~/.config/flota/config.toml.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import typer

try:  # typer 0.29+ vendors click (see cli/main.py)
    import typer._click as click
except ImportError:  # pragma: no cover (older typer)
    import click  # type: ignore[no-redef]

from cli.client import CliError
from cli.options import check_address

__all__ = ["config_path", "load_defaults"]

_TOP = {"coordinator", "output"}


def config_path() -> Path:
    if os.environ.get("FLOTA_CONFIG"):
        return Path(os.environ["FLOTA_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flota" / "config.toml"


def load_defaults(root: click.Command) -> tuple[dict[str, Any], Path | None]:
    """The default_map for `root` from the user's file, and the file (None: there is none)."""
    path = config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        if os.environ.get("FLOTA_CONFIG"):
            raise CliError(f"no such config file: {path} ($FLOTA_CONFIG)") from None
        return {}, None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{path}: {exc}") from None
    defaults: dict[str, Any] = {}
    for key in data.keys() & _TOP:
        value = data[key]
        if key == "coordinator":
            if not isinstance(value, str):
                raise CliError(f"{path}: coordinator must be a string HOST:PORT")
            defaults["coordinator"] = check_address(value, f"coordinator in {path}")
        elif value not in ("json", "text"):
            raise CliError(f'{path}: output must be "json" or "text", not {value!r}')
        else:
            defaults["json_output"] = value == "json"
    commands = {k: v for k, v in data.items() if k not in _TOP}
    defaults.update(_section(root, commands, [], path))
    return defaults, path


def _section(command: click.Command, table: dict[str, Any], where: list[str], path: Path) -> dict[str, Any]:
    subcommands: dict[str, click.Command] = getattr(command, "commands", {})
    out: dict[str, Any] = {}
    for key, value in table.items():
        here = [*where, key]
        if key in subcommands:
            if not isinstance(value, dict):
                raise CliError(f"{path}: [{'.'.join(here)}] must be a table of that command's options")
            out[key] = _section(subcommands[key], value, here, path)
            continue
        param = _option(command, key)
        if param is None or not where:
            what = "command or option" if where else "setting or command"
            see = " ".join(["flota", *where, "--help"])
            raise CliError(f"{path}: unknown {what} {'.'.join(here)!r} (see: {see})")
        out[param.name or key] = _checked(command, param, value, ".".join(here), path)
    return out


def _option(command: click.Command, key: str) -> click.Parameter | None:
    flag = "--" + key.replace("_", "-")
    for param in command.params:
        if param.param_type_name == "option" and (flag in param.opts or flag in param.secondary_opts):
            return param
    return None


def _checked(command: click.Command, param: click.Parameter, value: Any, key: str, path: Path) -> Any:
    """`value` as the option will take it, checked now so a bad one names the file."""
    if isinstance(value, dict):
        raise CliError(f"{path}: {key} must be a value, not a table")
    if param.multiple and not isinstance(value, list):
        value = [value]
    if isinstance(value, list) and not param.multiple:
        raise CliError(f"{path}: {key} takes one value, not a list")
    if getattr(param, "is_flag", False) and not isinstance(value, bool):
        raise CliError(f"{path}: {key} is a flag: true or false")
    try:
        param.process_value(click.Context(command), value)  # no configurable option has a callback
    except typer.BadParameter as exc:
        raise CliError(f"{path}: {key}: {exc.message}") from None
    return value
