#!/usr/bin/env python3
"""`flota node add` benchmark on the network-namespace lab (needs root).

A coordinator and the CLI on lab host "ws", a real OpenSSH server and a throwaway user on
"box" (tests/lab/sshhost.py). Measured, each on the monotonic clock:

1. The wheelhouse from an empty cache (flota's wheel built, the node's wheels downloaded
   from this machine's package index, for the box's Python), in this process's namespace:
   lab hosts reach no index, so `add` in the lab always finds it cached.
2. `flota node add --service none` of a fresh host with the wheelhouse cached: from the
   command's start to its exit (it exits once the node is online), then `flota node
   uninstall`; repeated `--trials` times on the same box.
3. `flota node upgrade` of that box (added once more, `--service none`): each upgrade goes
   to another release (tests/lab/release.py: a copy of this tree with another version, run
   as the CLI), alternating between two, from the command's start to its exit (it exits
   once the node is online with the new version). The first upgrade to each release builds
   its wheel and is not counted, so the counted ones find their wheelhouse cached.
4. The wheelhouse's size (files and bytes), with and (`--llm`) without the llm agent's.

    python scripts/bench_install.py [--trials 5] [--llm] [--json install.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.install import preflight, wheelhouse  # noqa: E402
from tests.fleet import Fleet  # noqa: E402
from tests.lab.netlab import Lab, cleanup_stale  # noqa: E402
from tests.lab.release import release  # noqa: E402
from tests.lab.sshhost import SshHost, remove_stale_users  # noqa: E402


def _wheelhouse(cache: Path, extras: tuple[str, ...]) -> dict[str, Any]:
    os.environ["XDG_CACHE_HOME"] = str(cache)
    probe = subprocess.run(
        ["sh", "-s"], input=preflight.probe_script("/usr/bin/python3"), capture_output=True, text=True
    )
    facts = preflight.parse(probe.stdout)
    assert facts.python is not None, probe.stdout
    t0 = time.monotonic()
    wh = wheelhouse.build(facts, facts.python, extras, online=False)
    return {"seconds": time.monotonic() - t0, "files": len(wh.files()), "bytes": wh.size}


def _upgrades(fleet: Fleet, box: SshHost, env: dict[str, str], tmp: Path, trials: int) -> dict[str, Any]:
    add = ["node", "add", box.target, "--identity", str(box.key), "--service", "none", "--name", "box"]
    res = fleet.flota(*add, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    releases = [release(tmp, "9.8.0"), release(tmp, "9.8.1")]
    times = []
    for i in range(trials + 2):  # the first two build each release's wheel
        t0 = time.monotonic()
        res = fleet.flota("node", "upgrade", "box", env=env | releases[i % 2], timeout=600)
        assert res.returncode == 0 and "upgraded from" in res.stdout, res.stdout + res.stderr
        if i >= 2:
            times.append(time.monotonic() - t0)
    res = fleet.flota("node", "uninstall", "box", env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return {"p50": statistics.median(times), "max": max(times), "trials": times}


def bench(trials: int, llm: bool) -> dict[str, Any]:
    cleanup_stale()
    remove_stale_users()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="flota-bench-install-") as tmp:
        cache = Path(tmp) / "cache"
        report["wheelhouse"] = _wheelhouse(cache, ())
        if llm:
            report["wheelhouse_llm"] = _wheelhouse(Path(tmp) / "cache-llm", ("llm",))
        with Lab(workdir=Path(tmp) / "lab") as lab:
            lan = lab.add_network("lan")
            ws, box_host = lab.add_host("ws", [lan]), lab.add_host("box", [lan])
            box = SshHost(box_host, Path(tmp) / "ssh")
            fleet = Fleet(ws.dir / "home", cli_prefix=ws.command([]))
            dev = Path(tmp) / "dev"
            (dev / ".ssh").mkdir(parents=True)
            (dev / ".ssh" / "known_hosts").write_text(box.known_hosts_line())
            env = {"HOME": str(dev), "XDG_CACHE_HOME": str(cache)}
            try:
                fleet.start_coordinator(
                    "--advertise", ws.address(), listen="0.0.0.0:0", prefix=ws.command([])
                )
                adds, removes = [], []
                for _ in range(trials):
                    t0 = time.monotonic()
                    add = ["node", "add", box.target, "--identity", str(box.key), "--service", "none"]
                    res = fleet.flota(*add, "--name", "box", env=env, timeout=300)
                    assert res.returncode == 0, res.stderr
                    adds.append(time.monotonic() - t0)
                    t0 = time.monotonic()
                    res = fleet.flota("node", "uninstall", "box", env=env, timeout=300)
                    assert res.returncode == 0, res.stderr
                    removes.append(time.monotonic() - t0)
                report["upgrade_s"] = _upgrades(fleet, box, env, Path(tmp), trials)
            finally:
                fleet.close()
                box.close()
    report["add_cached_s"] = {"p50": statistics.median(adds), "max": max(adds), "trials": adds}
    report["uninstall_s"] = {"p50": statistics.median(removes), "max": max(removes), "trials": removes}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--llm", action="store_true", help="also size the wheelhouse with --with llm")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    report = bench(args.trials, args.llm)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for key, what in (
        ("wheelhouse", "wheelhouse (empty cache)"),
        ("wheelhouse_llm", "wheelhouse --with llm"),
    ):
        if key in report:
            w = report[key]
            print(f"{what}: {w['seconds']:.1f} s, {w['files']} wheels, {w['bytes'] / 2**20:.1f} MiB")
    for key, what in (
        ("add_cached_s", "node add (cached)"),
        ("uninstall_s", "node uninstall"),
        ("upgrade_s", "node upgrade (cached)"),
    ):
        r = report[key]
        print(f"{what}: p50 {r['p50']:.1f} s, max {r['max']:.1f} s over {len(r['trials'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
