"""`python -m node_agent start|join ...`: the node daemon's own entry point.

The `flota node ...` commands exec this, so the daemon never loads the CLI's libraries.

Exit codes: 0 stopped (SIGTERM/SIGINT; SIGUSR1: restart, the jobs kept); 2 a NodeError,
printed as one ``flota: ...`` line (a bad flag or state directory, or this node was
removed from the fleet); 3 the coordinator was unreachable at the join; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
from pathlib import Path

from node_agent.config import default_state_dir, load_config
from node_agent.errors import NodeError
from protos.entry import CannotListen, OneLineParser, check_port_free

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="flota node")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run the node daemon in the foreground")
    start.add_argument("--state-dir", type=Path)
    start.add_argument("--name")
    start.add_argument("--listen", help="HOST:PORT (port 0 picks a free one)")
    start.add_argument("--network", help="declare the network profile (home, vpn, public ...)")
    start.add_argument(
        "--network-rule", action="append", default=[], help="PROFILE=if:GLOB or PROFILE=subnet:CIDR"
    )
    start.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    start.add_argument("--slots", type=int)
    start.add_argument("--heartbeat", type=float)
    start.add_argument("--no-mdns", action="store_true")
    start.add_argument(
        "--unreachable-after", type=float, help="seconds of silence before the coordinator says unreachable"
    )
    start.add_argument(
        "--lost-after", type=float, help="seconds before the coordinator gives this node's jobs up"
    )
    start.add_argument(
        "--allow-remote",
        action="append",
        default=[],
        help="only fetch from / push to repository URLs matching this glob; repeatable",
    )
    start.add_argument(
        "--agent-cli",
        action="append",
        default=[],
        help="also report this agent CLI when it is on PATH (for templates in flota.yaml); repeatable",
    )
    start.add_argument(
        "--model-server",
        action="append",
        default=[],
        help="an OpenAI-compatible model server on this machine (http://127.0.0.1:PORT/v1); repeatable",
    )
    start.add_argument(
        "--model-slots",
        action="append",
        type=int,
        default=[],
        help="jobs at once for the --model-server given at the same place (default: what it reports, else 1)",
    )
    start.add_argument(
        "--warm-agents",
        action="store_true",
        help="start the llm agent host (litellm imported) with the daemon, not at the first llm job",
    )
    start.add_argument(
        "--agent-idle",
        type=float,
        help="seconds without an llm job before the agent host exits (0: no host; 600)",
    )
    start.add_argument(
        "--stop-after-disconnect",
        type=float,
        help="cut off from the coordinator this long, stop jobs and push their work (0: never; 600)",
    )
    start.add_argument(
        "--dial-home",
        action="store_true",
        help="open the link to the coordinator from here (behind NAT); no address is announced",
    )
    start.add_argument("--coordinator", help="the coordinator's API HOST:PORT, if it moved since the join")
    start.add_argument("--json", action="store_true", help="print the ready line as JSON")
    join = sub.add_parser("join", help="enroll this node with a coordinator")
    join.add_argument("address", help="the coordinator's join address HOST:PORT")
    token = join.add_mutually_exclusive_group(required=True)
    token.add_argument("--token")
    token.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the token from standard input (its first line), so it is in no command line",
    )
    join.add_argument("--name")
    join.add_argument("--state-dir", type=Path)
    join.add_argument("--json", action="store_true")
    return p


def _say(as_json: bool, line: str, details: dict[str, object]) -> None:
    print(json.dumps(details) if as_json else line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir: Path = args.state_dir or default_state_dir()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("zeroconf").setLevel(logging.WARNING)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if args.command == "join":
            from node_agent.enroll import join

            name = args.name or socket.gethostname().split(".")[0]
            token = sys.stdin.readline().strip() if args.token_stdin else args.token
            node_id = join(state_dir, args.address, token, name)
            cfg_path = state_dir / "node.toml"
            if args.name and not cfg_path.exists():
                cfg_path.write_text(f'name = "{args.name}"\n')
            _say(
                args.json,
                f"joined as {name} ({node_id}); start it with: flota node start"
                + (f" --state-dir {args.state_dir}" if args.state_dir else ""),
                {"event": "joined", "id": node_id, "name": name, "state_dir": str(state_dir)},
            )
            return 0
        from node_agent.app import serve

        if args.coordinator:
            from node_agent.enroll import split_address
            from node_agent.identity import write_private

            host, port = split_address(args.coordinator, 7370)
            write_private(state_dir / "identity" / "coordinator", f"{host}:{port}".encode())

        config = load_config(
            state_dir,
            name=args.name,
            listen=args.listen,
            network=args.network,
            network_rules=args.network_rule,
            labels=args.label,
            slots=args.slots,
            heartbeat_s=args.heartbeat,
            mdns=False if args.no_mdns else None,
            unreachable_after_s=args.unreachable_after,
            lost_after_s=args.lost_after,
            stop_after_disconnect_s=args.stop_after_disconnect,
            allow_remotes=args.allow_remote,
            model_servers=args.model_server,
            agent_clis=args.agent_cli,
            dial_home=True if args.dial_home else None,
            model_slots=args.model_slots,
            warm_agents=True if args.warm_agents else None,
            agent_idle_s=args.agent_idle,
        )
        check_port_free(config.state_dir, config.listen_host, config.listen_port)
        asyncio.run(
            serve(config, ready=lambda line, details: _say(args.json, line, {"event": "ready", **details}))
        )
        return 0
    except (NodeError, CannotListen) as exc:
        print(f"flota: {exc}", file=sys.stderr)
        return 3 if getattr(exc, "unreachable", False) else 2
    except OSError as exc:  # e.g. a state directory that cannot be created
        print(f"flota: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
