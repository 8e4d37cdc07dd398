"""Secrets (`flota secret set`, `flota run --secret NAME`): a job gets the value in its
environment; it is redacted from logs and results, absent from SQLite, and gone from the
node's disk once the coordinator has the result."""

from __future__ import annotations

import os
import secrets as pysecrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import Fleet, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        yield f
    finally:
        f.close()


def files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
        except OSError:
            continue
    return found


def test_secret_reaches_only_the_job_and_is_redacted_everywhere(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = "sk-" + pysecrets.token_hex(16)
    from_env = "env-" + pysecrets.token_hex(16)
    monkeypatch.setenv("FLOTA_TEST_FROM_ENV", from_env)  # the coordinator's environment
    fleet.start_coordinator()
    fleet.start_node("vault")
    node_state = fleet.home / "nodes" / "vault"

    set_ = fleet.flota("secret", "set", "API_KEY", input_text=stored + "\n")
    assert set_.returncode == 0, set_.stderr
    assert stored not in set_.stdout + set_.stderr
    assert fleet.json("secret", "list")["names"] == ["API_KEY"]

    command = (
        'echo "key=$API_KEY"; echo "env=$FLOTA_TEST_FROM_ENV"; '
        'printf %s "$API_KEY" | wc -c; echo "$API_KEY" >&2; exit 3'
    )
    result = fleet.flota(
        "--json", "run", "--secret", "API_KEY", "--secret", "FLOTA_TEST_FROM_ENV", command, "--follow"
    )
    assert result.returncode == 1, result.stderr
    assert stored not in result.stdout and from_env not in result.stdout
    job_id = fleet.json("status", fleet.json("status")[0]["id"])["jobs"][0]["id"]
    logs = fleet.flota("logs", job_id, check=True).stdout
    assert logs.splitlines() == [
        "key=[secret API_KEY]",
        "env=[secret FLOTA_TEST_FROM_ENV]",
        str(len(stored)),  # the job saw the whole value
        "[secret API_KEY]",
    ]
    job = fleet.json("status", job_id)
    assert job["status"] == "failed" and "[secret API_KEY]" in job["result"]["log_tail"]
    status_text = fleet.flota("status", job_id, check=True).stdout + str(job)
    assert stored not in status_text and from_env not in status_text

    # Only names are stored by the coordinator; the node forgets everything after the ack.
    keyring_file = fleet.home / "coordinator" / "secrets" / "API_KEY"
    assert files_containing(fleet.home / "coordinator", stored.encode()) == [keyring_file]
    assert files_containing(fleet.home / "coordinator", from_env.encode()) == []
    for value in (stored, from_env):
        wait_until(lambda v=value: not files_containing(node_state, v.encode()), what="node holds no secret")
    assert oct((fleet.home / "coordinator" / "secrets" / "API_KEY").stat().st_mode & 0o777) == "0o600"
    assert os.environ.get("API_KEY") is None


def test_missing_or_bad_secrets_are_one_clear_error(fleet: Fleet) -> None:
    fleet.start_coordinator()
    missing = fleet.flota("run", "--secret", "NOPE_KEY", "true")
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "flota: secret NOPE_KEY is not set on the coordinator "
        "(flota secret set NOPE_KEY, or set it in the coordinator's environment)"
    )
    bad = fleet.flota("secret", "set", "not a name", input_text="value-1234\n")
    assert bad.returncode == 2 and "invalid secret name" in bad.stderr
    short = fleet.flota("secret", "set", "SHORT", input_text="ab\n")
    assert short.returncode == 2 and "at least 4 characters" in short.stderr
    gone = fleet.flota("secret", "rm", "NOPE_KEY")
    assert gone.returncode == 2 and "no secret 'NOPE_KEY'" in gone.stderr
    assert "Traceback" not in missing.stderr + bad.stderr + short.stderr + gone.stderr
