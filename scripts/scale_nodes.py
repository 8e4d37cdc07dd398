#!/usr/bin/env python3
"""Many real node daemons in one process: one asyncio loop, one `NodeDaemon` per state
directory (each already joined, so each has its own id, certificate and port).

Used by scripts/bench_scale.py; not a product entry point.

    python scripts/scale_nodes.py --stats FILE [--slots N] STATE_DIR...

Each daemon listens on 127.0.0.1 (port 0), never announces over mDNS, and registers
with the coordinator recorded at its join, exactly as `python -m node_agent start
--no-mdns` would. SIGTERM/SIGINT stop them all gracefully (goodbye, then stop).

Every second the process writes FILE (JSON): how many daemons are ready and how many
NodeInfo snapshots they built (one per heartbeat and per registration), which gives
the heartbeat rate without touching the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node_agent.app import NodeDaemon  # noqa: E402
from node_agent.config import load_config  # noqa: E402
from protos.flota.v1 import types_pb2  # noqa: E402

log = logging.getLogger("flota.scale")


class CountingDaemon(NodeDaemon):
    """A NodeDaemon that counts the NodeInfo snapshots it builds."""

    infos = 0

    def info(self) -> types_pb2.NodeInfo:
        CountingDaemon.infos += 1
        return super().info()


def _write_stats(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def _serve(dirs: list[Path], slots: int, stats: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemons = [
        CountingDaemon(load_config(d, name=d.name, listen="127.0.0.1:0", mdns=False, slots=slots))
        for d in dirs
    ]
    ready: dict[str, dict[str, object]] = {}
    failed: dict[str, str] = {}

    async def one(daemon: NodeDaemon) -> None:
        name = daemon.config.name
        try:
            await daemon.run(stop, lambda line, state: ready.__setitem__(name, state))
        except Exception as exc:  # one daemon's failure is reported, the others go on
            log.exception("daemon %s failed", name)
            failed[name] = repr(exc)

    def snapshot() -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "time": time.time(),
            "daemons": len(daemons),
            "ready": len(ready),
            "failed": failed,
            "infos": CountingDaemon.infos,
            "ports": {n: s.get("port") for n, s in ready.items()},
        }

    async def report() -> None:
        while True:
            _write_stats(stats, snapshot())
            await asyncio.sleep(1.0)

    reporter = loop.create_task(report())
    try:
        await asyncio.gather(*(one(d) for d in daemons))
    finally:
        reporter.cancel()
        _write_stats(stats, {**snapshot(), "stopped": True})
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stats", type=Path, required=True)
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("dirs", nargs="+", type=Path)
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    return asyncio.run(_serve(args.dirs, args.slots, args.stats))


if __name__ == "__main__":
    raise SystemExit(main())
