"""The only module of the CLI that opens a channel: to the coordinator, as admin.

Credentials come from `$FLOTA_HOME/admin/` (written by the coordinator on first start);
the address from --coordinator, then $FLOTA_COORDINATOR, then `$FLOTA_HOME/admin/coordinator`.

`Client` has one typed method per RPC the CLI makes, so mypy checks each request and reply
at this boundary. Every unary call has a deadline (`CALL_TIMEOUT_S`; longer for the calls
that do git work); following a stream has none (keepalive catches a dead link), and
neither have cleanup and prune, whose every node and git call has a deadline of its own
and whose progress arrives as it is made.

Error handling: a failed call raises `CliError` with one line and an exit code: the
coordinator unreachable or too slow is EXIT_UNAVAILABLE, a refused request EXIT_USAGE.
A stream raises it when iterated, since its call starts only then.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from protos.channels import client_options
from protos.contract import COORDINATOR_SERVER_NAME, flota_home
from protos.flota.v1 import coordinator_pb2 as pb
from protos.flota.v1 import coordinator_pb2_grpc

__all__ = [
    "EXIT_FAILED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliError",
    "Client",
    "Events",
    "Stream",
    "admin_credentials",
    "flota_home",
    "translate",
    "unbatch",
]

EXIT_FAILED = 1  # a run or job did not succeed
EXIT_USAGE = 2  # bad input: unknown id, malformed flag, refused request
EXIT_UNAVAILABLE = 3  # the coordinator cannot be reached

CALL_TIMEOUT_S = 30.0
QUIET_S = 1.0  # a call that takes longer says what it waits for, on stderr
NOTE_EVERY_S = 10.0  # without a terminal, how often a long wait says it is still waiting
GIT_CALL_TIMEOUT_S = 120.0  # SubmitRun pushes the base ref; a bounded log read

_Request = TypeVar("_Request")
_Reply = TypeVar("_Reply")


class CliError(Exception):
    """One line for the user, and the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CliError(
            f"no admin credentials in {path.parent} (start a coordinator on this machine with "
            "`flota coordinator start` or `flota up --local 3`, or set FLOTA_HOME)",
            EXIT_UNAVAILABLE,
        ) from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc


def _no_reply(method: str, address: str) -> CliError:
    return CliError(f"the coordinator at {address} ended {method} without its reply", EXIT_UNAVAILABLE)


def admin_credentials(address: str | None = None) -> tuple[str, grpc.ChannelCredentials]:
    """The coordinator's address (`address`, else $FLOTA_COORDINATOR, else the one the
    coordinator wrote) and the admin's TLS credentials, from `$FLOTA_HOME/admin/`."""
    admin = flota_home() / "admin"
    address = address or os.environ.get("FLOTA_COORDINATOR") or ""
    if not address:
        address = _read(admin / "coordinator").decode().strip()
    creds = grpc.ssl_channel_credentials(
        _read(admin / "ca.pem"), _read(admin / "key.pem"), _read(admin / "cert.pem")
    )
    return address, creds


def translate(exc: grpc.RpcError, address: str) -> CliError:
    """A failed call as one line and an exit code."""
    code = exc.code()
    details = exc.details() or code.name
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return CliError(
            f"cannot reach the coordinator at {address} ({details.splitlines()[0]})", EXIT_UNAVAILABLE
        )
    return CliError(details.splitlines()[0] if details else code.name, EXIT_USAGE)


class Client:
    """The coordinator's API as the CLI uses it: proto requests in, proto replies out."""

    def __init__(self, address: str | None = None) -> None:
        self.address, creds = admin_credentials(address)
        self.channel = grpc.secure_channel(
            self.address, creds, options=client_options(COORDINATOR_SERVER_NAME)
        )
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

    # --- fleet ----------------------------------------------------------------------------

    def list_nodes(self) -> pb.ListNodesReply:
        return self._unary(self._stub.ListNodes, pb.ListNodesRequest())

    def create_token(self, ttl_s: float = 0.0) -> pb.CreateTokenReply:
        """A one-time join token; `ttl_s` 0 takes the coordinator's default lifetime."""
        return self._unary(self._stub.CreateToken, pb.CreateTokenRequest(ttl_s=ttl_s))

    def drain_node(self, node: str, undo: bool = False) -> pb.NodeStatus:
        return self._unary(self._stub.DrainNode, pb.DrainNodeRequest(node=node, undo=undo))

    def remove_node(self, node: str) -> pb.RemoveNodeReply:
        return self._unary(self._stub.RemoveNode, pb.RemoveNodeRequest(node=node))

    # --- runs -----------------------------------------------------------------------------

    def submit_run(self, request: pb.SubmitRunRequest) -> pb.Run:
        waiting = ""  # a run with a repository waits for a push, which can take a while
        if request.HasField("repo"):
            remote = request.repo.remote or "its remote"
            waiting = f"the coordinator is pushing the run's base to {remote}"
        return self._unary(self._stub.SubmitRun, request, GIT_CALL_TIMEOUT_S, waiting)

    def get_run(self, run_id: str) -> pb.Run:
        return self._unary(self._stub.GetRun, pb.GetRunRequest(run_id=run_id))

    def batch_results(self, run_id: str) -> Iterator[pb.Job]:
        """A run's jobs in input order, with their inputs and results (they come in chunks)."""
        for chunk in self._stream(self._stub.BatchResults, pb.BatchResultsRequest(run_id=run_id), 120.0):
            yield from chunk.jobs

    def list_runs(self, limit: int) -> pb.ListRunsReply:
        return self._unary(self._stub.ListRuns, pb.ListRunsRequest(limit=limit))

    def get_job(self, job_id: str) -> pb.Job:
        return self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def watch_run(self, run_id: str) -> Stream[pb.RunEvent]:
        """The run's jobs, then each change; the last event is the run. The coordinator may
        end the stream early (the watcher fell behind): then it ends without the run."""
        return self._stream(self._stub.WatchRun, pb.WatchRunRequest(run_id=run_id), None)

    def stream_events(self, since: int, topics: list[str]) -> Stream[pb.Event]:
        """The fleet's events after `since` (0: the current state first), one by one (the
        coordinator's batches opened); never ends by itself."""
        request = pb.StreamEventsRequest(since=since, topics=topics, batch=True)
        return Events(lambda: self._stub.StreamEvents(request), self.address)

    def stream_logs(self, job_id: str, follow: bool) -> Stream[pb.LogChunk]:
        """A job's output, every attempt; with `follow`, until the job ends."""
        request = pb.StreamLogsRequest(job_id=job_id, follow=follow)
        return self._stream(self._stub.StreamLogs, request, None if follow else GIT_CALL_TIMEOUT_S)

    def cancel(self, ident: str) -> pb.CancelReply:
        """Cancel a run (RUN id) or one job (RUN.N id)."""
        return self._unary(self._stub.Cancel, pb.CancelRequest(id=ident))

    def retry(self, ident: str, failed_only: bool = False) -> pb.RetryReply:
        """Run a job (RUN.N) or a run's jobs (RUN) again; `failed_only`: only those that
        did not succeed."""
        return self._unary(self._stub.Retry, pb.RetryRequest(id=ident, failed=failed_only))

    def cleanup(self, run_id: str, progress: Callable[[pb.Progress], None]) -> pb.CleanupReply:
        """Each step the coordinator reports goes to `progress`; then the reply."""
        events = self._stream(self._stub.Cleanup, pb.CleanupRequest(run_id=run_id), None)
        for event in events:
            if event.HasField("progress"):
                progress(event.progress)
            elif event.HasField("done"):
                return event.done
        raise _no_reply("Cleanup", self.address)

    def prune(self, request: pb.PruneRequest, progress: Callable[[pb.Progress], None]) -> pb.PruneReply:
        """As `cleanup`: progress as it comes, then the reply."""
        for event in self._stream(self._stub.Prune, request, None):
            if event.HasField("progress"):
                progress(event.progress)
            elif event.HasField("done"):
                return event.done
        raise _no_reply("Prune", self.address)

    # --- secrets --------------------------------------------------------------------------

    def set_secret(self, name: str, value: str) -> pb.SecretsReply:
        return self._unary(self._stub.SetSecret, pb.SetSecretRequest(name=name, value=value))

    def delete_secret(self, name: str) -> pb.SecretsReply:
        return self._unary(self._stub.DeleteSecret, pb.DeleteSecretRequest(name=name))

    def list_secrets(self) -> pb.SecretsReply:
        return self._unary(self._stub.ListSecrets, pb.ListSecretsRequest())

    def close(self) -> None:
        self.channel.close()

    # --- transport ------------------------------------------------------------------------

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Reply],
        request: _Request,
        timeout: float = CALL_TIMEOUT_S,
        waiting: str = "",
    ) -> _Reply:
        """`waiting`: what a call that can be slow waits for; said on stderr once it has
        taken QUIET_S, with the time so far (a spinner on a terminal)."""
        try:
            if not waiting:
                return method(request, timeout=timeout, wait_for_ready=False)
            call = method.future(request, timeout=timeout, wait_for_ready=False)
            try:
                return call.result(timeout=QUIET_S)
            except grpc.FutureTimeoutError:
                return _wait_saying(call, waiting)
            finally:
                call.cancel()  # a no-op once it has ended; stops it on Ctrl-C
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from None

    def _stream(
        self,
        method: grpc.UnaryStreamMultiCallable[_Request, _Reply],
        request: _Request,
        timeout: float | None,
    ) -> Stream[_Reply]:
        return Stream(lambda: method(request, timeout=timeout), self.address)


class Stream(Iterator[_Reply]):
    """A server stream: iterate it (errors become CliError, as for a unary call); `cancel()`
    ends it from another thread (a view that stops following a log)."""

    def __init__(self, start: Callable[[], Any], address: str) -> None:
        self._start, self._address = start, address
        self._call: Any = None
        self._cancelled = False

    def __iter__(self) -> Stream[_Reply]:
        return self

    def __next__(self) -> _Reply:
        if self._call is None:
            if self._cancelled:
                raise StopIteration
            self._call = self._start()
        try:
            return next(self._call)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            if self._cancelled and exc.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise translate(exc, self._address) from None

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()


class Events(Stream[pb.Event]):
    """StreamEvents asked for batches: each event of a batch in turn, as if sent alone."""

    def __init__(self, start: Callable[[], Any], address: str) -> None:
        super().__init__(start, address)
        self._pending: collections.deque[pb.Event] = collections.deque()

    def __next__(self) -> pb.Event:
        while not self._pending:
            self._pending.extend(unbatch(super().__next__()))
        return self._pending.popleft()


def unbatch(event: pb.Event) -> Sequence[pb.Event]:
    """The events a StreamEvents message carries: a batch's, or itself."""
    return event.batch if event.type == "batch" else (event,)


def _wait_saying(call: grpc.Future[_Reply], waiting: str) -> _Reply:
    """Wait for a slow call, saying so on stderr: a spinner with the seconds on a
    terminal, otherwise a line now and every NOTE_EVERY_S."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    started = time.monotonic() - QUIET_S
    if err.is_terminal:
        with err.status(f"{waiting}...") as status:
            while True:
                try:
                    return call.result(timeout=1.0)
                except grpc.FutureTimeoutError:
                    status.update(f"{waiting}... {time.monotonic() - started:.0f} s")
    print(f"flota: {waiting}...", file=sys.stderr, flush=True)
    while True:
        try:
            return call.result(timeout=NOTE_EVERY_S)
        except grpc.FutureTimeoutError:
            print(
                f"flota: still waiting: {waiting} ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
