"""`flota node join ADDR --token-stdin`: the token read from standard input, so that it is
in no command line (what `flota node add` hands over the ssh channel)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fleet import Fleet


def test_join_reads_the_token_from_stdin(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "home")
    try:
        fleet.start_coordinator()
        address, token = fleet.token()
        state = tmp_path / "node"
        args = ["--json", "node", "join", address, "--token-stdin", "--name", "n1", "--state-dir", str(state)]
        joined = fleet.flota(*args, input_text=token + "\n")
        assert joined.returncode == 0, joined.stderr
        info = json.loads(joined.stdout)
        assert (info["event"], info["name"]) == ("joined", "n1")
        assert info["id"] == (state / "identity" / "id").read_text().strip()

        for bad in ([], ["--token", token, "--token-stdin"]):
            res = fleet.flota("node", "join", address, *bad, "--state-dir", str(tmp_path / "other"))
            assert res.returncode == 2
            assert res.stderr == "flota: node join needs one of --token TOKEN or --token-stdin\n"
        empty = fleet.flota(
            "node", "join", address, "--token-stdin", "--state-dir", str(tmp_path / "x"), input_text=""
        )
        assert empty.returncode == 2
        assert empty.stderr.strip().splitlines()[-1].startswith("flota: malformed join token")
    finally:
        fleet.close()
