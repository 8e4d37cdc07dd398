"""`python -m coordinator start ...`: the coordinator's own entry point.

`flota coordinator start` execs this, so the daemon never loads the CLI's libraries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from coordinator.config import load_config
from coordinator.errors import CoordinatorError
from protos.entry import CannotListen, OneLineParser, check_port_free

__all__ = ["main"]


def _say(as_json: bool, line: str, details: dict[str, object]) -> None:
    print(json.dumps(details) if as_json else line, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="flota coordinator")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run the coordinator in the foreground")
    start.add_argument("--home", type=Path, help="state directory root (default: $FLOTA_HOME or ~/.flota)")
    start.add_argument("--listen", help="HOST:PORT of the API (port 0 picks a free one)")
    start.add_argument("--join-port", type=int, help="port of the enrollment service (default: API port + 1)")
    start.add_argument("--advertise", help="host name or address nodes use to reach this machine")
    start.add_argument("--no-mdns", action="store_true")
    start.add_argument("--lost-after", type=float, help="seconds of silence before a node is lost")
    start.add_argument("--unreachable-after", type=float)
    start.add_argument("--push-timeout", type=float, help="seconds a push of a run's base may take")
    start.add_argument("--json", action="store_true", help="print the ready line as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("zeroconf").setLevel(logging.WARNING)
    try:
        from coordinator.app import serve

        config = load_config(
            args.home,
            listen=args.listen,
            join_listen_port=args.join_port,
            advertise=args.advertise,
            mdns=False if args.no_mdns else None,
            lost_after_s=args.lost_after,
            unreachable_after_s=args.unreachable_after,
            push_timeout_s=args.push_timeout,
        )
        check_port_free(config.state_dir, config.listen_host, config.listen_port)
        check_port_free(config.state_dir, config.listen_host, config.join_port)
        asyncio.run(
            serve(config, ready=lambda line, details: _say(args.json, line, {"event": "ready", **details}))
        )
        return 0
    except (CoordinatorError, CannotListen) as exc:
        print(f"flota: {exc}", file=sys.stderr)
        return 3 if getattr(exc, "unreachable", False) else 2
    except OSError as exc:  # e.g. a state directory that cannot be created
        print(f"flota: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
