"""Job output on the coordinator: capped per attempt, redacted, stored, relayed.

A node redacts what its jobs print; redaction here is the net under that (a daemon
restarted mid-job no longer knows the secret values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from coordinator.events import RunHub
from coordinator.models import Job, Result
from coordinator.secrets import Keyring, redact
from coordinator.store import Store

__all__ = ["LOG_LINES_MAX", "LogBook"]

LOG_LINES_MAX = 50_000  # per attempt: a job that prints without end must not fill the disk


class LogBook:
    def __init__(self, store: Store, keyring: Keyring, hub: RunHub) -> None:
        self._store = store
        self._keyring = keyring
        self._hub = hub
        self._counts: dict[str, int] = {}  # attempt id -> lines stored
        self._secrets: dict[str, dict[str, str]] = {}  # job id -> values sent, to redact

    def sent(self, job: Job, values: dict[str, str]) -> None:
        """The secret values a job was given (what its output must not show)."""
        self._secrets[job.id] = values

    def values(self, job: Job) -> dict[str, str]:
        """The values sent for `job` (or, after a restart, the current ones)."""
        values = self._secrets.get(job.id)
        if values is None:
            values = self._secrets[job.id] = self._keyring.values(job.secrets)
        return values

    def scrub(self, job: Job, result: Result) -> Result:
        if not job.secrets:
            return result
        values = self.values(job)
        return replace(
            result,
            error=redact(result.error, values),
            log_tail=redact(result.log_tail, values),
            answer=redact(result.answer, values),
        )

    def append(self, job: Job, attempt_id: str, lines: Sequence[str]) -> None:
        """Store and relay lines, up to LOG_LINES_MAX per attempt; the last place is kept
        for a marker, so a truncated log always says so."""
        kept = self._counts.get(attempt_id)
        if kept is None:  # first lines since this coordinator started: count what is stored
            kept = self._store.log_count(job.id, attempt_id)
        if kept >= LOG_LINES_MAX:
            return
        if job.secrets:
            values = self.values(job)
            lines = [redact(line, values) for line in lines]
        room = LOG_LINES_MAX - 1 - kept
        if len(lines) > room:
            lines = [*lines[:room], f"[flota: log truncated after {LOG_LINES_MAX - 1} lines]"]
        self._counts[attempt_id] = kept + len(lines)
        self._store.append_logs(job.id, attempt_id, lines)
        self._hub.log(job.id, attempt_id, list(lines))

    def append_late(self, job: Job, attempt_id: str, lines: Sequence[str]) -> None:
        """Output that came with a late result: stored (capped, redacted), not relayed."""
        values = self.values(job) if job.secrets else {}
        self._store.append_logs(job.id, attempt_id, [redact(line, values) for line in lines[:LOG_LINES_MAX]])

    def attempt_done(self, attempt_id: str) -> None:
        self._counts.pop(attempt_id, None)

    def job_done(self, job_id: str) -> None:
        self._secrets.pop(job_id, None)
