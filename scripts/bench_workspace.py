#!/usr/bin/env python3
"""Workspace benchmark: how long the node takes to ready a job's worktree.

Times exactly what the node runner does to prepare a repository job for a first
attempt (``Workspace.prepare``: mirror, fetch of the base ref, worktree on a new
branch), against a real bare remote on local disk (path URL, as the tests use),
for a 3,000-file and a 30,000-file repository, in three cases:

  - cold: first job on the node: no mirror yet (a fresh node state dir each time);
  - warm: mirror cached, the remote got one new commit (pushed as a new
    ``refs/flota/base/<run>``) since the last job: fetch one commit + worktree;
  - warm, same base: another job of the same run: the commit is already in the mirror.

Repositories are generated with ``git fast-import`` (nested directories, text files of
a few hundred bytes to a few KB). Each warm case is repeated N times (10, --quick 3),
cold 3 times (--quick 1); reported as median/min/max wall ms and median CPU ms (this
process plus its git children: steadier than wall time on a shared machine). The git
processes of the last cold and the last warm prepare are listed with their times.

Nothing is deleted until the end: a node keeps finished jobs' worktrees until
`flota cleanup`, and on ext4 without a journal, creating files within a minute or so
of deleting many makes every inode allocation scan the recently deleted ones (kernel
``recently_deleted``), which would triple the 30k-file checkout time. For the same
reason, give the disk a few minutes between two runs of this benchmark there.

    python scripts/bench_workspace.py [--quick] [--sizes 3000,30000] [--json out.json]
                                      [--git-config checkout.workers=4 ...]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchreport import emit  # noqa: E402  (the table and JSON of every bench script)

from node_agent import git as git_runner  # noqa: E402
from node_agent.workspace import Workspace  # noqa: E402
from tests.gitenv import GIT_ENV  # noqa: E402

SIZES = (3_000, 30_000)
TARGET_WARM_MS = {3_000: 250.0, 30_000: 1000.0}


_WORD_TEXT = (
    "def class return import from self value result config node job run task state "
    "error path file data list dict str int None True False if else for while in not "
    "and or with as try except raise async await yield lambda pass break continue "
    "const let var function export interface type struct impl fn pub use mod match "
    "width height index count total buffer stream client server request response "
    "handle update create delete fetch parse format render build test assert check"
)
_WORDS = _WORD_TEXT.split()
_EXTS = (".py", ".py", ".ts", ".tsx", ".go", ".rs", ".c", ".h", ".md", ".json", ".yaml", ".txt")


# ----- repository generation ---------------------------------------------------------


def git(*args: str, cwd: Path, input: bytes | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, input=input, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def _line_pool(rng: random.Random, count: int = 20_000) -> list[bytes]:
    lines = []
    for _ in range(count):
        indent = " " * (4 * rng.randrange(4))
        words = rng.choices(_WORDS, k=rng.randint(2, 12))
        lines.append(f"{indent}{' '.join(words)}\n".encode())
    return lines


def _tree(rng: random.Random, files: int) -> list[str]:
    """Paths of ``files`` files spread over nested directories (depth up to 6)."""
    dirs = [""]
    depth = {"": 0}
    while len(dirs) < max(2, files // 12):
        parent = rng.choice(dirs)
        if depth[parent] >= 6:
            continue
        name = f"{parent}{rng.choice(_WORDS)}_{len(dirs)}/"
        dirs.append(name)
        depth[name] = depth[parent] + 1
    return [f"{rng.choice(dirs)}{rng.choice(_WORDS)}_{i}{rng.choice(_EXTS)}" for i in range(files)]


def _content(rng: random.Random, pool: list[bytes]) -> bytes:
    size = min(8_000, max(200, int(rng.lognormvariate(7.0, 0.8))))  # median ~1.1 KB
    out = bytearray()
    while len(out) < size:
        out += b"".join(rng.choices(pool, k=16))
    return bytes(out[:size])


def _commit_stream(
    ref: str, parent: str, message: str, changes: Sequence[tuple[str, bytes]], when: int
) -> bytes:
    head = [
        f"commit {ref}",
        f"author dev <dev@example.com> {when} +0000",
        f"committer dev <dev@example.com> {when} +0000",
        f"data {len(message)}",
        message,
    ]
    if parent:
        head.append(f"from {parent}")
    parts = ["\n".join(head).encode() + b"\n"]
    for path, data in changes:
        parts.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
    parts.append(b"\n")
    return b"".join(parts)


class Remote:
    """A bare repository on local disk, grown with fast-import."""

    def __init__(self, bare: Path, files: int, seed: int = 1) -> None:
        self.bare = bare
        self.rng = random.Random(seed)
        self.pool = _line_pool(self.rng)
        self.paths = _tree(self.rng, files)
        self.when = 1_700_000_000
        git("init", "-q", "--bare", str(bare), cwd=bare.parent)
        changes = [(p, _content(self.rng, self.pool)) for p in self.paths]
        self.head = self._commit("refs/heads/main", "", "initial import", changes)
        # A served repository is packed with deltas, as a hosting service keeps it.
        git("repack", "-a", "-d", "-q", cwd=bare)

    @property
    def url(self) -> str:
        return str(self.bare)

    def _commit(self, ref: str, parent: str, message: str, changes: Sequence[tuple[str, bytes]]) -> str:
        self.when += 60
        stream = _commit_stream(ref, parent, message, changes, self.when)
        git("fast-import", "--quiet", "--force", cwd=self.bare, input=stream)
        return git("rev-parse", f"{ref}^{{commit}}", cwd=self.bare).strip()

    def new_base(self, run: str) -> tuple[str, str]:
        """One new commit on main (3 files edited, 1 added), pushed as the base ref of ``run``."""
        changes = [(p, _content(self.rng, self.pool)) for p in self.rng.sample(self.paths, 3)]
        new_path = f"{self.rng.choice(self.paths).rsplit('/', 1)[0]}/new_{run}.py"
        self.paths.append(new_path)
        changes.append((new_path, _content(self.rng, self.pool)))
        self.head = self._commit("refs/heads/main", self.head, f"change for {run}", changes)
        ref = f"refs/flota/base/{run}"
        git("update-ref", ref, self.head, cwd=self.bare)
        return ref, self.head


# ----- measurement -------------------------------------------------------------------


def _cpu_s() -> float:
    """CPU seconds used so far by this process and its waited-for children (git)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Samples:
    """Wall and CPU milliseconds of repeated prepares. CPU time (git's included) hardly
    moves when other work shares the machine; wall time does."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def prepare(self, ws: Workspace, remote: Remote, ref: str, commit: str, branch: str, key: str) -> Path:
        """The runner's call for a first attempt (no resume branches), timed and checked."""
        cpu0, t0 = _cpu_s(), time.perf_counter()
        path = ws.prepare(remote.url, ref, commit, branch, key)
        self.wall.append((time.perf_counter() - t0) * 1000)
        self.cpu.append((_cpu_s() - cpu0) * 1000)
        head = git("rev-parse", "HEAD", cwd=path).strip()
        if head != commit:
            raise RuntimeError(f"worktree {path} is at {head}, expected {commit}")
        return path

    def report(self) -> dict[str, Any]:
        return {
            "median": statistics.median(self.wall),
            "min": min(self.wall),
            "max": max(self.wall),
            "n": len(self.wall),
            "cpu_median": statistics.median(self.cpu),
            "all": [round(v, 1) for v in self.wall],
        }


@contextmanager
def _git_timings() -> Iterator[list[dict[str, Any]]]:
    """Record {git: subcommand, ms, cpu_ms} for every git process the Workspace runs."""
    calls: list[dict[str, Any]] = []
    original = Workspace._run

    def timed(self: Workspace, args: Sequence[str], *rest: Any, **kw: Any) -> Any:
        cpu0, t0 = _cpu_s(), time.perf_counter()
        try:
            return original(self, args, *rest, **kw)
        finally:
            wall, cpu = (time.perf_counter() - t0) * 1000, (_cpu_s() - cpu0) * 1000
            words = list(args)
            while words[:1] in (["--git-dir"], ["-c"]):
                words = words[2:]
            calls.append({"git": " ".join(words[:1]), "ms": round(wall, 1), "cpu_ms": round(cpu, 1)})

    Workspace._run = timed  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        Workspace._run = original  # type: ignore[method-assign]


def bench_size(tmp: Path, files: int, cold_n: int, warm_n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    remote_dir = tmp / f"remote-{files}"
    remote_dir.mkdir()
    remote = Remote(remote_dir / "repo.git", files)
    gen_s = time.perf_counter() - t0
    pack_kb = sum(p.stat().st_size for p in (remote.bare / "objects" / "pack").glob("*.pack")) // 1024

    # Cold: a new node state dir each time (the Workspace is made at daemon start).
    cold = Samples()
    cold_steps: list[dict[str, Any]] = []
    for i in range(cold_n):
        ws = Workspace(tmp / f"node-{files}-cold{i}")
        run = f"c{i}"
        ref, commit = remote.new_base(run)
        with _git_timings() as calls:
            cold.prepare(ws, remote, ref, commit, f"flota/{run}/0", f"{run}.0.a1")
        cold_steps = calls

    # Warm: one node whose mirror a first job made; each next job's run has a base
    # one commit ahead. Finished jobs' worktrees stay, as on a node until
    # `flota cleanup` (see the module doc).
    ws = Workspace(tmp / f"node-{files}-warm")
    ref, commit = remote.new_base("w0")
    Samples().prepare(ws, remote, ref, commit, "flota/w0/0", "w0.0.a1")
    warm, same = Samples(), Samples()
    warm_steps: list[dict[str, Any]] = []
    for i in range(1, warm_n + 1):
        run = f"w{i}"
        ref, commit = remote.new_base(run)
        with _git_timings() as calls:
            warm.prepare(ws, remote, ref, commit, f"flota/{run}/0", f"{run}.0.a1")
        warm_steps = calls
        # A second job of the same run: the base commit is already in the mirror.
        same.prepare(ws, remote, ref, commit, f"flota/{run}/1", f"{run}.1.a1")
    return {
        "files": files,
        "remote_pack_kb": pack_kb,
        "generate_s": round(gen_s, 2),
        "cold_ms": cold.report(),
        "warm_ms": warm.report(),
        "warm_same_base_ms": same.report(),
        "cold_steps_last": cold_steps,
        "warm_steps_last": warm_steps,
        "target_warm_ms": TARGET_WARM_MS.get(files),
    }


def run(quick: bool, sizes: Sequence[int] = SIZES, git_config: Sequence[str] = ()) -> dict[str, Any]:
    """Run the benchmark; a JSON-able report. ``git_config`` (``key=value``) is added to
    the settings the Workspace passes to every git call: for trying a setting out."""
    cold_n, warm_n = (1, 3) if quick else (3, 10)
    load = [os.getloadavg()[0]]
    pinned = git_runner._CONFIG_OVERRIDES
    git_runner._CONFIG_OVERRIDES = (*pinned, *git_config)
    try:
        with tempfile.TemporaryDirectory(prefix="flota-bench-ws-") as tmp:
            results = [bench_size(Path(tmp), files, cold_n, warm_n) for files in sizes]
            load.append(os.getloadavg()[0])
    finally:
        git_runner._CONFIG_OVERRIDES = pinned
    return {
        "git": subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip(),
        "git_config": list(git_config),
        "cpus": os.cpu_count(),
        "load_avg_1m": {"start": load[0], "end": load[1]},
        "quick": quick,
        "sizes": results,
    }


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, value) lines for a table."""

    def fmt(s: dict[str, Any]) -> str:
        return (
            f"median {s['median']:7.1f} ms (min {s['min']:.1f}, max {s['max']:.1f}, n={s['n']}),"
            f" cpu {s['cpu_median']:.0f} ms"
        )

    def steps(calls: list[dict[str, Any]]) -> str:
        return ", ".join(f"{c['git']} {c['ms']:.0f} (cpu {c['cpu_ms']:.0f})" for c in calls)

    out: list[tuple[str, str]] = []
    for size in report["sizes"]:
        files = f"{size['files']:,} files"
        out.append((f"cold, {files}", fmt(size["cold_ms"])))
        out.append(("  git steps (ms), last cold", steps(size["cold_steps_last"])))
        warm = fmt(size["warm_ms"])
        target = size.get("target_warm_ms")
        if target:
            verdict = "ok" if size["warm_ms"]["median"] <= target else "MISSED"
            warm += f"; target <= {target:.0f} ms: {verdict}"
        out.append((f"warm +1 commit, {files}", warm))
        out.append(("  git steps (ms), last warm", steps(size["warm_steps_last"])))
        out.append((f"warm same base, {files}", fmt(size["warm_same_base_ms"])))
    load = report["load_avg_1m"]
    machine = f"{report['git']}, {report['cpus']} cpus, load {load['start']:.1f} -> {load['end']:.1f}"
    out.append(("machine", machine + "".join(f", -c {c}" for c in report.get("git_config", []))))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (cold 1, warm 3)")
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in SIZES),
        help="comma-separated repository sizes in files (default: %(default)s)",
    )
    parser.add_argument(
        "--git-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra git setting for the Workspace's git calls, to try one out (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    opts = parser.parse_args()
    report = run(opts.quick, [int(s) for s in opts.sizes.split(",") if s], opts.git_config)
    emit(rows(report), report, opts.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
