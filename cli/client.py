"""The only module of the CLI that opens a channel: to the coordinator, as admin.

Credentials come from `$FLOTA_HOME/admin/` (written by the coordinator on first start);
the address from --coordinator, then $FLOTA_COORDINATOR, then `$FLOTA_HOME/admin/coordinator`.
Every call has a deadline; failures become CliError with one line and an exit code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from protos.channels import client_options
from protos.contract import COORDINATOR_SERVER_NAME, flota_home
from protos.flota.v1 import coordinator_pb2_grpc

__all__ = ["EXIT_FAILED", "EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError", "Client", "flota_home"]

EXIT_FAILED = 1  # a run or job did not succeed
EXIT_USAGE = 2  # bad input: unknown id, malformed flag, refused request
EXIT_UNAVAILABLE = 3  # the coordinator cannot be reached

CALL_TIMEOUT_S = 30.0


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


def _translate(exc: grpc.RpcError, address: str) -> CliError:
    code = exc.code()
    details = exc.details() or code.name
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return CliError(
            f"cannot reach the coordinator at {address} ({details.splitlines()[0]})", EXIT_UNAVAILABLE
        )
    return CliError(details.splitlines()[0] if details else code.name, EXIT_USAGE)


class Client:
    def __init__(self, address: str | None = None) -> None:
        admin = flota_home() / "admin"
        self.address = address or os.environ.get("FLOTA_COORDINATOR") or ""
        if not self.address:
            self.address = _read(admin / "coordinator").decode().strip()
        creds = grpc.ssl_channel_credentials(
            _read(admin / "ca.pem"), _read(admin / "key.pem"), _read(admin / "cert.pem")
        )
        self.channel = grpc.secure_channel(
            self.address, creds, options=client_options(COORDINATOR_SERVER_NAME)
        )
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

    def call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as exc:
            raise _translate(exc, self.address) from None

    def stream(self, method: str, request: Any, timeout: float | None = None) -> Iterator[Any]:
        """A server stream. Following one has no deadline (keepalive catches a dead link);
        a bounded read passes `timeout`."""
        try:
            yield from getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise _translate(exc, self.address) from None

    def close(self) -> None:
        self.channel.close()
