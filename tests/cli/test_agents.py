"""cli/agents.py: templates filled in (argv, groups, environment), flota.yaml's agent
settings, and the fan-out's refusals, with no daemons."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from cli.agents import NO_KEY, TEMPLATES, Template, fan_out, load_repo_config, takes
from cli.client import CliError

API = "http://127.0.0.1:9/v1"


def test_placeholders_fill_groups_only_when_given_and_never_from_the_prompt() -> None:
    t = Template(
        "x",
        ("x", "run", "{prompt}"),
        ("--model", "{model}"),
        api_base_args=("--api-base", "{api_base}"),
        max_steps_args=("--max-steps", "{max_steps}"),
        env={"BASE": "{api_base}", "KEY": "{api_key}", "FIXED": "1", "M": "{model}"},
    )
    assert shlex.split(t.command("use {model} and {api_base}", "")) == [
        "x",
        "run",
        "use {model} and {api_base}",
    ]
    assert shlex.split(t.command("p", "m", API, 5)) == [
        "x", "run", "p", "--model", "m", "--api-base", API, "--max-steps", "5"
    ]  # fmt: skip
    assert t.environment("", "") == {"FIXED": "1"}  # a variable whose value is not given is left out
    assert t.environment("m", API) == {"BASE": API, "KEY": NO_KEY, "FIXED": "1", "M": "m"}


def test_api_base_and_max_steps_reach_the_clis_that_take_them_and_are_refused_elsewhere() -> None:
    (task,) = fan_out("architect", ["fix"], ["openai/m"], 0, TEMPLATES, API, 7)
    assert shlex.split(task.command)[-4:] == ["--model", "openai/m", "--max-steps", "7"]
    assert task.env["ARCHITECT_API_BASE"] == API and task.env["OPENAI_API_KEY"] == NO_KEY
    assert list(task.ignore_paths) == [".architect"]
    (plain,) = fan_out("architect", ["fix"], ["openai/m"], 0, TEMPLATES)
    assert "ARCHITECT_API_BASE" not in plain.env and "OPENAI_API_KEY" not in plain.env  # the node's own key
    with pytest.raises(CliError, match=r"^--api-base does not reach the shell agent"):
        fan_out("shell", ["make"], [], 0, TEMPLATES, API)
    with pytest.raises(CliError, match=r"^--max-steps does not reach the mine agent"):
        fan_out("mine", ["go"], [], 0, {"mine": Template("", ("mine", "{prompt}"))}, "", 3)
    (llm,) = fan_out("llm", ["fix"], ["openai/m"], 0, TEMPLATES, API, 3)  # the llm agent takes both
    assert llm.agent == "llm" and not llm.env
    # What `flota run` asks before giving flota.yaml's run.max_steps to an agent.
    assert [takes(a, TEMPLATES, "max_steps") for a in ("llm", "architect", "aider", "shell")] == [
        True, True, False, False
    ]  # fmt: skip


def test_flota_yaml_settings_for_a_builtin_agent_and_a_new_one(tmp_path: Path) -> None:
    (tmp_path / "flota.yaml").write_text(
        "agents:\n"
        "  architect:\n"
        "    model: openai/local\n"
        "    flags: [--self-eval, 'off']\n"
        "    env: {ARCHITECT_LANGUAGE: en}\n"
        "  mine:\n"
        "    argv: [mine, '{prompt}']\n"
        "    api_base_args: [--base, '{api_base}']\n"
        "    env: {MINE_KEY: '{api_key}'}\n"
        "    ignore: [.mine]\n"
        "    report: {steps: 'a.steps|steps'}\n"
    )
    agents = load_repo_config(tmp_path).agents
    (task,) = fan_out("architect", ["fix"], [], 0, {**TEMPLATES, **agents})
    argv = shlex.split(task.command)
    assert argv[:3] == ["architect", "run", "fix"] and argv[-4:] == [
        "--self-eval",
        "off",
        "--model",
        "openai/local",
    ]
    assert task.model == "openai/local" and task.env["ARCHITECT_LANGUAGE"] == "en"
    assert task.env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"  # the template's own variables stay
    (mine,) = fan_out("mine", ["go"], [], 0, {**TEMPLATES, **agents}, API)
    assert shlex.split(mine.command) == ["mine", "go", "--base", API]
    assert (dict(mine.env), list(mine.ignore_paths)) == ({"MINE_KEY": NO_KEY}, [".mine"])


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("agents:\n  x: {flags: [a]}\n", "agents.x.argv must be a non-empty list of strings"),
        ("agents:\n  aider: {colour: red}\n", "unknown setting agents.aider.colour"),
        ("agents:\n  aider: {env: {A: 1}}\n", "agents.aider.env must be a mapping of strings"),
        ("agents:\n  aider: {env: {'1A': x}}\n", "agents.aider.env: invalid variable name '1A'"),
        ("agents:\n  aider: {flags: a}\n", "agents.aider.flags must be a list of strings"),
    ],
)
def test_bad_agent_settings_are_one_line(tmp_path: Path, yaml_text: str, message: str) -> None:
    (tmp_path / "flota.yaml").write_text(yaml_text)
    with pytest.raises(CliError, match=message):
        load_repo_config(tmp_path)
