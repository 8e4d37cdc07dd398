"""The real agent CLIs through flota on a local fleet (one coordinator, one node), each on
a one-step task (create a file) against a scripted OpenAI-compatible server on loopback
that answers at once:

- to first request: from `flota run` to the first request the model server receives
  (submit, dispatch, worktree, the CLI's own start: Python, litellm, its repo scan);
- total: from `flota run` to `flota run --follow` returning with the result (the commit
  and push included).

The llm agent (built in) is measured the same way, for reference. The CLIs come from
scripts/python_clis.

    python scripts/bench_clis.py [--quick] [--json FILE]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchreport  # noqa: E402

from tests.agent_clis import BIN, FLOTA_YAML, MODEL, edit_script, node_env  # noqa: E402
from tests.fake_openai import FakeOpenAI, call, text  # noqa: E402
from tests.fleet import Fleet, make_repo  # noqa: E402

AGENTS = ("llm", "architect", "aider")


def one(fleet: Fleet, agent: str, work: Path) -> tuple[float, float, str]:
    script = (
        [call("write_file", path="hello.txt", content="hello\n"), call("finish", summary="done")]
        if agent == "llm"
        else edit_script(agent)
    )
    with FakeOpenAI(script, default=text("done")) as server:
        start = time.monotonic()
        args = ["--json", "run", "--agent", agent, "--model", MODEL, "--api-base", server.base_url]
        done = fleet.flota(*args, "--repo", str(work), "create hello.txt", "--follow", timeout=300)
        total = time.monotonic() - start
        first = server.request_times[0] - start if server.request_times else float("nan")
    status = (
        json.loads(done.stdout)["jobs"][0]["status"] if done.stdout.strip() else f"exit {done.returncode}"
    )
    return first, total, status


def run(quick: bool) -> dict[str, Any]:
    trials = 1 if quick else 3
    report: dict[str, Any] = {"trials": trials}
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(Path(tmp) / "home")
        try:
            fleet.start_coordinator()
            fleet.start_node("n1", env=node_env(Path(tmp) / "nodehome"))
            work, _ = make_repo(Path(tmp) / "repo", {"README.md": "sample\n", "flota.yaml": FLOTA_YAML})
            for agent in AGENTS:
                if agent != "llm" and not (BIN / agent).exists():
                    report[agent] = {"missing": f"{BIN / agent} (bash scripts/python_clis)"}
                    continue
                one(fleet, agent, work)  # warm: the node's mirror, the CLI's files in the page cache
                runs = [one(fleet, agent, work) for _ in range(trials)]
                report[agent] = {
                    "first_request_s": statistics.median(r[0] for r in runs),
                    "total_s": statistics.median(r[1] for r in runs),
                    "statuses": [r[2] for r in runs],
                }
        finally:
            fleet.close()
    return report


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    out = [("trials (median of)", str(report["trials"]))]
    for agent in AGENTS:
        r = report[agent]
        if "missing" in r:
            out.append((agent, f"missing: {r['missing']}"))
            continue
        out.append((f"{agent}: flota run -> first model request", f"{r['first_request_s']:.2f} s"))
        out.append(
            (f"{agent}: flota run -> result (one step)", f"{r['total_s']:.2f} s  {', '.join(r['statuses'])}")
        )
    return out


if __name__ == "__main__":
    sys.exit(benchreport.main(__doc__, run, rows, "one trial per agent"))
