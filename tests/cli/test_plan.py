"""Plans: the file's checks (every problem on its line), the overlap warnings, and
`flota plan` against a scripted OpenAI-compatible server on loopback and the real local
model (SmolLM2): a valid plan, or one clear line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cli.plan.schema import check
from tests.fake_openai import FakeOpenAI, text
from tests.fleet import ROOT, make_repo
from tests.real_model import smollm2_server


def _flota(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "FLOTA_HOME": str(cwd),
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
    )


GOOD = {
    "tasks": [
        {"id": "coder", "role": "coder", "prompt": "add the flag to cli/main.py", "files": ["cli/main.py"]},
        {
            "id": "tester",
            "role": "tester",
            "prompt": "test the flag",
            "depends_on": ["coder"],
            "files": ["tests/*"],
        },
        {"id": "docs", "role": "docs", "prompt": "document the flag", "files": ["docs/*.md"]},
    ]
}


def test_a_hand_edited_plan_says_every_problem_on_its_line(tmp_path: Path) -> None:
    bad = {
        "agnt": "shell",
        "tasks": [
            {"id": "coder", "prompt": "x", "depends_on": ["tester"], "colour": "red"},
            {"id": "tester", "prompt": "y", "depends_on": ["coder"]},
            {"id": "docs", "depends_on": ["writer"]},
            {"id": "coder", "prompt": "z"},
        ],
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = _flota("run", "--plan", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith(f"flota: {path}: ") for line in lines), lines
    said = [line.removeprefix(f"flota: {path}: ") for line in lines]
    assert said == [
        "the plan: unknown key 'agnt' (known: agent, model, budget, check, feature, tasks)",
        "task 'coder': unknown key 'colour' "
        "(known: id, role, prompt, agent, model, depends_on, files, check)",
        "task 'docs' has no prompt",
        "duplicate task id 'coder' (tasks 1 and 4)",
        "task 'docs' depends on 'writer', which is not a task of the plan",
        "a cycle: coder -> tester -> coder",
    ]
    mixed = _flota("run", "--plan", str(path), "--agent", "llm", cwd=tmp_path)
    assert mixed.returncode == 2 and mixed.stderr == (
        "flota: a plan (--plan) names its own tasks, agents and models: give them in the plan file\n"
    )
    path.write_text("tasks: [\n")
    result = _flota("run", "--plan", str(path), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"flota: {path}: not YAML (line ")


def test_overlapping_files_of_tasks_that_may_run_together_are_warned_about() -> None:
    plan, problems = check(
        {
            "tasks": [
                {"id": "coder", "prompt": "a", "files": ["cli/*.py"]},
                {"id": "tester", "prompt": "b", "files": ["cli/main.py"], "depends_on": ["coder"]},
                {"id": "docs", "prompt": "c", "files": ["cli/main.py", "docs/*"]},
                {"id": "notes", "prompt": "d", "files": ["NOTES.md"]},
            ]
        },
        paths=["cli/main.py", "cli/runs.py", "docs/cli.md"],
    )
    assert problems == [] and plan is not None
    # The tester waits for the coder: never at the same time. The docs task may run with either.
    assert plan.warnings == (
        "tasks 'coder' and 'docs' may run at the same time and both expect to own cli/main.py",
        "tasks 'tester' and 'docs' may run at the same time and both expect to own cli/main.py",
    )
    # Without the repository's files, globs that match each other are the overlap.
    plan, _ = check(
        {
            "tasks": [
                {"id": "a", "prompt": "a", "files": ["src/*"]},
                {"id": "b", "prompt": "b", "files": ["src/x.py"]},
            ]
        }
    )
    assert plan is not None and plan.warnings == (
        "tasks 'a' and 'b' may run at the same time and both expect to own src/*",
    )


def _plan_cmd(server: str, repo: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _flota(
        "plan", "add a --verbose flag to the CLI", "--repo", str(repo), "--planner", "openai/planner",
        "--api-base", server, "-o", str(out), *extra, cwd=repo.parent,
    )  # fmt: skip


def test_the_planner_writes_a_valid_plan_from_the_repository(tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo", {"README.md": "the sample CLI\n", "cli/main.py": "print(1)\n"})
    out = tmp_path / "plan.yaml"
    with FakeOpenAI([text("Here is the plan:\n```json\n" + json.dumps(GOOD) + "\n```")]) as server:
        result = _plan_cmd(server.base_url, work, out, "--check", "true")
        asked = server.requests
    assert result.returncode == 0, result.stderr
    assert len(asked) == 1
    shown = asked[0]["messages"][1]["content"]
    assert "cli/main.py" in shown and "the sample CLI" in shown and "add a --verbose flag" in shown
    written = yaml.safe_load(out.read_text())
    assert [t["id"] for t in written["tasks"]] == ["coder", "tester", "docs"]
    assert written["check"] == "true" and written["feature"] == "add a --verbose flag to the CLI"
    assert written["tasks"][1]["depends_on"] == ["coder"]
    assert "3 tasks from openai/planner (1 answer)" in result.stdout
    assert "tester (tester) after coder" in result.stdout


def test_malformed_answers_are_told_back_then_the_plan_fails_in_one_line(tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo")
    out = tmp_path / "plan.yaml"
    cyclic: dict[str, Any] = {
        "tasks": [
            {"id": "a", "prompt": "x", "depends_on": ["b"]},
            {"id": "b", "prompt": "y", "depends_on": ["a"]},
        ]
    }
    script = [
        text("I would add a flag."),
        text(json.dumps(cyclic)),
        text(json.dumps({"tasks": [{"id": "a"}]})),
    ]
    with FakeOpenAI(script) as server:
        result = _plan_cmd(server.base_url, work, out)
        asked = server.requests
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "flota: the planner openai/planner gave no valid plan in 3 answers; last: task 'a' has no prompt"
    )
    assert not out.exists()
    # Each malformed answer went back to the planner with the checker's lines.
    assert len(asked) == 3
    second, third = asked[1]["messages"], asked[2]["messages"]
    assert second[-2] == {"role": "assistant", "content": "I would add a flag."}
    assert "the answer has no JSON object" in second[-1]["content"]
    assert "a cycle: a -> b -> a" in third[-1]["content"]

    # Told back once, then a good plan: written.
    with FakeOpenAI([text(json.dumps(cyclic)), text(json.dumps(GOOD))]) as server:
        result = _plan_cmd(server.base_url, work, out, "--attempts", "2")
    assert result.returncode == 0, result.stderr
    assert "(2 answers)" in result.stdout and out.exists()


def test_an_unreachable_planner_is_one_line(tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo")
    with FakeOpenAI([]) as server:
        dead = server.base_url
    result = _plan_cmd(dead, work, tmp_path / "plan.yaml", "--attempts", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("flota: the planner openai/planner failed: ")


def test_the_real_local_model_as_planner_ends_in_a_plan_or_one_line(tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo", {"README.md": "a tiny tool\n"})
    out = tmp_path / "plan.yaml"
    with smollm2_server() as (api_base, model):
        result = _flota(
            "plan", "add a --verbose flag", "--repo", str(work), "--planner", f"openai/{model}",
            "--api-base", api_base, "-o", str(out), "--attempts", "2", "--context-chars", "2000",
            "--max-tokens", "300", cwd=tmp_path, timeout=280,
        )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode == 0:
        plan, problems = check(yaml.safe_load(out.read_text()))
        assert plan is not None and problems == []
    else:
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("flota: the planner ")
