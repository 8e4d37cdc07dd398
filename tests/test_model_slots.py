"""A local model server's slots on a real fleet: a batch of llm jobs for a model a node
serves never has more requests at its server at once than the server's slots, while the
node has more job slots; `flota nodes` shows them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_openai import FakeOpenAI, call
from tests.fleet import Fleet, wait_until

pytestmark = pytest.mark.timeout(240)

BUSY = "every slot of the model servers of openai/fake is in use (1 nodes)"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        yield f
    finally:
        f.close()


def test_a_batch_never_exceeds_the_servers_slots(fleet: Fleet) -> None:
    with FakeOpenAI(default=call("finish", summary="ok"), total_slots=2) as server:
        fleet.start_coordinator()
        fleet.start_node("gpu", "--slots", "4", "--model-server", server.base_url)
        models = wait_until(
            lambda: fleet.nodes()["gpu"]["info"]["facts"].get("local_models"), what="local models reported"
        )
        assert models == [
            {"model": "openai/fake", "api_base": server.base_url, "slots": 2}
        ]  # llama.cpp's word
        table = fleet.flota("nodes", env={"COLUMNS": "400"}, check=True).stdout
        assert "openai/fake(2)" in table

        server.hold()  # the first jobs wait on the model: their slots stay taken
        tasks = [arg for i in range(5) for arg in ("--task", f"task {i}")]
        run = fleet.json("run", "--agent", "llm", "--model", "openai/fake", *tasks)
        wait_until(lambda: len(server.requests) >= 2, timeout=60, what="two requests at the server")

        def waiting() -> list[str]:
            jobs = fleet.json("status", run["id"])["jobs"]
            return [j["wait_reason"] for j in jobs if j["status"] == "queued"]

        assert (
            wait_until(lambda: (w := waiting()) and len(w) == 3 and w, what="three jobs waiting")
            == [BUSY] * 3
        )
        assert len(server.requests) == 2
        server.release()
        done = wait_until(
            lambda: (r := fleet.json("status", run["id"]))["status"] not in ("running", "queued") and r,
            timeout=120,
            what="the run's end",
        )
        assert [j["status"] for j in done["jobs"]] == ["success"] * 5, json.dumps(done)[:2000]
        assert len(server.requests) == 5
        assert server.peak == 2  # never more at once than its slots, though the node had 4


def test_model_slots_flag_overrides_what_the_server_says(fleet: Fleet) -> None:
    with FakeOpenAI(default=call("finish", summary="ok"), total_slots=2) as server:
        fleet.start_coordinator()
        fleet.start_node("gpu", "--slots", "4", "--model-server", server.base_url, "--model-slots", "1")
        wait_until(
            lambda: (
                fleet.nodes()["gpu"]["info"]["facts"].get("local_models")
                == [{"model": "openai/fake", "api_base": server.base_url, "slots": 1}]
            ),
            what="one slot reported",
        )
        bad = fleet.flota("node", "start", "--model-server", server.base_url, "--model-slots", "0")
        assert bad.returncode == 2 and bad.stderr.startswith("flota: invalid model slots 0"), bad.stderr
        assert "Traceback" not in bad.stderr
