"""coordinator/secrets.py and the reconciler's use of it: values only in the spec sent
to the node, redacted from every stored log line and result, names only in SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.errors import InvalidRequest, NotFound
from coordinator.secrets import Keyring
from protos.contract import redact
from tests.coordinator.fakes import Harness, log_lines, make_run, result_event, started, until

VALUE = "sk-live-0123456789abcdef"


def test_redact_longest_first_and_every_occurrence() -> None:
    secrets = {"A": "abcd", "B": "abcdef"}
    assert redact("x abcdef y abcd abcd", secrets) == "x [secret B] y [secret A] [secret A]"
    assert redact("nothing here", secrets) == "nothing here"


def test_keyring_files_are_owner_only_and_env_is_the_fallback(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "secrets", environ={"FROM_ENV": "env-value-1"})
    ring.set("API_KEY", VALUE)
    assert (tmp_path / "secrets" / "API_KEY").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    assert ring.names() == ["API_KEY"]
    assert ring.values(("API_KEY", "FROM_ENV", "MISSING")) == {"API_KEY": VALUE, "FROM_ENV": "env-value-1"}
    for name, value in [("bad name", VALUE), ("../x", VALUE), ("OK_NAME", "ab"), ("OK_NAME", "a\0bcdef")]:
        with pytest.raises(InvalidRequest):
            ring.set(name, value)
    ring.delete("API_KEY")
    with pytest.raises(NotFound):
        ring.delete("API_KEY")


def test_values_go_to_the_node_and_nowhere_else(tmp_path: Path) -> None:
    h = Harness(tmp_path)

    async def scenario() -> None:
        h.rec.keyring.set("API_KEY", VALUE)
        link = h.node("nA", "node-a")
        run = make_run(secrets=("API_KEY",))
        h.rec.submit(run)
        job = run.jobs[0]
        h.step()
        await until(lambda: link.starts, "StartJob")
        assert dict(link.starts[0].secrets) == {"API_KEY": VALUE}
        attempt = job.attempts[0].id
        h.rec.sessions.on_event("nA", started(job.id, attempt))
        # A node restarted mid-job cannot redact any more: the coordinator still does.
        h.rec.sessions.on_event("nA", log_lines(job.id, attempt, [f"key={VALUE}"]))
        h.rec.sessions.on_event(
            "nA", result_event(job.id, attempt, "failed", error=f"bad {VALUE}", log_tail=VALUE)
        )
        await asyncio.sleep(0)
        stored = h.stored(job)
        assert [line for _, _, line in h.store.logs(job.id)] == ["key=[secret API_KEY]"]
        assert stored.result is not None
        assert (stored.result.error, stored.result.log_tail) == ("bad [secret API_KEY]", "[secret API_KEY]")
        assert stored.secrets == ("API_KEY",)
        h.store.close()
        for path in (tmp_path / "state").glob("flota.db*"):
            assert VALUE.encode() not in path.read_bytes(), path

    h.run(scenario)


def test_a_secret_deleted_before_dispatch_fails_the_job_clearly(tmp_path: Path) -> None:
    h = Harness(tmp_path)

    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run = make_run(secrets=("GONE_KEY",))
        h.rec.submit(run)
        h.step()
        await until(lambda: run.jobs[0].status == "failed", "job failed")
        assert link.starts == []
        result = run.jobs[0].result
        assert result is not None
        assert result.error == "secret GONE_KEY is not set on the coordinator (flota secret set GONE_KEY)"
        h.close()

    h.run(scenario)
