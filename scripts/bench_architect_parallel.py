"""`flota run --agent architect` side by side with architect-cli's own `architect parallel`:
the same three tasks (each creates a file), the same three models dealt round-robin, the
same scripted OpenAI-compatible server on loopback (each answer after --model-delay
seconds, standing in for a model's time), on this one machine.

- architect parallel: its three workers in git worktrees of the repository, from the
  command's start to its end; results as it prints them (status, steps, cost per worker).
- flota: a local fleet (a coordinator and --nodes node daemons, started beforehand), from
  `flota run` to `flota run --follow` returning; results from the jobs (status, files
  committed on each job's branch, cost).

    python scripts/bench_architect_parallel.py [--quick] [--json FILE]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchreport  # noqa: E402

from cli.agents import NO_KEY  # noqa: E402
from tests.agent_clis import BIN, node_env  # noqa: E402
from tests.fake_openai import FakeOpenAI, Reply, call, text  # noqa: E402
from tests.fleet import Fleet, git, make_repo  # noqa: E402

TASKS = [f"create the file task{i}.txt saying {i}" for i in (1, 2, 3)]
MODELS = [f"openai/fake{i}" for i in (1, 2, 3)]
MODEL_DELAY_S = 1.0
NODES = 3
_WORKER = re.compile(r"Worker (\d+): \[(\w+)\].*steps=(\d+) cost=\$([0-9.]+) duration=([0-9.]+)s")


def scripts(delay: float) -> dict[str, list[Reply]]:
    """Per model (so per worker): one write_file call, then the final answer."""
    return {
        m.split("/")[1]: [
            call("write_file", path=f"task{i}.txt", content=f"{i}\n", delay_s=delay),
            text(f"wrote task{i}.txt", delay_s=delay),
        ]
        for i, m in enumerate(MODELS, 1)
    }


def architect_parallel(work: Path, delay: float) -> dict[str, Any]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # its workers run `architect run`
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_API_KEY": NO_KEY,
        "OPENAI_API_KEY": NO_KEY,
    }
    tasks = [a for t in TASKS for a in ("--task", t)]
    with FakeOpenAI([], default=text("done"), by_model=scripts(delay)) as server:
        argv = [str(BIN / "architect"), "parallel", *tasks, "--workers", "3", "--models", ",".join(MODELS)]
        start = time.monotonic()
        proc = subprocess.run(
            [*argv, "--api-base", server.base_url],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )
        wall = time.monotonic() - start
        requests = len(server.requests)
    workers = [
        {"status": m[2], "steps": int(m[3]), "cost_usd": float(m[4]), "duration_s": float(m[5])}
        for m in _WORKER.finditer(proc.stderr)
    ]
    made = []
    for i in (1, 2, 3):  # its worktrees are kept, the changes uncommitted in them
        tree = work / f".architect-parallel-{i}"
        made.append(sorted(p.name for p in tree.glob("task*.txt")) if tree.is_dir() else [])
    return {
        "wall_s": wall,
        "exit": proc.returncode,
        "workers": workers,
        "files": made,
        "cost_usd": sum(w["cost_usd"] for w in workers),
        "requests": requests,
    }


def flota(tmp: Path, work: Path, remote: Path, delay: float, nodes: int) -> dict[str, Any]:
    fleet = Fleet(tmp / "home")
    try:
        fleet.start_coordinator()
        for n in range(nodes):
            fleet.start_node(f"n{n + 1}", env=node_env(tmp / f"nodehome{n + 1}"))
        with FakeOpenAI([], default=text("done"), by_model=scripts(delay)) as server:
            tasks = [a for t in TASKS for a in ("--task", t)]
            start = time.monotonic()
            args = ["--json", "run", "--agent", "architect", *tasks, "--workers", "3"]
            args += ["--models", ",".join(MODELS), "--api-base", server.base_url, "--repo", str(work)]
            done = fleet.flota(*args, "--follow", timeout=600)
            wall = time.monotonic() - start
            requests = len(server.requests)
        jobs = json.loads(done.stdout)["jobs"] if done.stdout.strip() else []
    finally:
        fleet.close()
    results = [j.get("result") or {} for j in jobs]
    files = []
    for r in results:
        branch = r.get("branch")
        files.append(
            git(
                "--git-dir", str(remote), "diff", "--name-only", r["base_commit"], f"refs/heads/{branch}"
            ).split()
            if branch
            else []
        )
    return {
        "wall_s": wall,
        "exit": done.returncode,
        "workers": [
            {
                "status": j["status"],
                "steps": r.get("steps", 0),
                "cost_usd": r.get("cost_usd", 0.0),
                "node": j.get("node_name"),
            }
            for j, r in zip(jobs, results, strict=True)
        ],
        "files": files,
        "cost_usd": sum(r.get("cost_usd", 0.0) for r in results),
        "requests": requests,
    }


def run(quick: bool) -> dict[str, Any]:
    if not (BIN / "architect").exists():
        raise SystemExit(f"architect-cli is missing ({BIN / 'architect'}): bash scripts/python_clis")
    delay = 0.2 if quick else MODEL_DELAY_S
    with tempfile.TemporaryDirectory() as tmp:
        work, _ = make_repo(Path(tmp) / "a", {"README.md": "sample\n"})
        own = architect_parallel(work, delay)
        work2, remote2 = make_repo(Path(tmp) / "b", {"README.md": "sample\n"})
        through = flota(Path(tmp), work2, remote2, delay, 1 if quick else NODES)
    return {"model_delay_s": delay, "architect_parallel": own, "flota": through}


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    out = [("model answer delay", f"{report['model_delay_s']:.1f} s")]
    for name in ("architect_parallel", "flota"):
        r = report[name]
        statuses = ", ".join(f"{w['status']}/{w['steps']} steps" for w in r["workers"]) or "none parsed"
        out += [
            (f"{name}: wall", f"{r['wall_s']:.2f} s (exit {r['exit']}, {r['requests']} model requests)"),
            (f"{name}: results", statuses),
            (f"{name}: files", "; ".join(",".join(f) or "-" for f in r["files"])),
            (f"{name}: cost", f"${r['cost_usd']:.5f}"),
        ]
    return out


if __name__ == "__main__":
    sys.exit(benchreport.main(__doc__, run, rows, "0.2 s model delay, one node"))
