"""The coordinator's error tree: every exception the coordinator raises on purpose.

CoordinatorError         something the coordinator cannot do (one line for the user)
├── ConfigError          bad flag, config file or state directory       (exit 2 at start)
├── NotFound             unknown run, job or node                        -> NOT_FOUND
├── InvalidRequest       malformed request, or one that asks the impossible -> INVALID_ARGUMENT
├── Refused              the caller may not do this (a token, a certificate) -> PERMISSION_DENIED
├── AlreadyExists        a node id or name is taken                       -> ALREADY_EXISTS
├── RepoError            the repository or its remote cannot be used     -> FAILED_PRECONDITION
├── MissingSecret        a job's secret is no longer set                 -> FAILED_PRECONDITION
├── Incompatible         a node speaks a protocol outside the window     -> FAILED_PRECONDITION
├── PkiError             a key, certificate or CSR is unusable           -> INVALID_ARGUMENT
├── StoreError           the database could not be read or written       -> ABORTED
└── NodeCallError        a call to a node failed (its gRPC code kept)    -> UNAVAILABLE

Errors are translated at the boundaries (`raise X(...) from exc`): sqlite errors in
store.py, cryptography's in pki.py, gRPC's in dispatch.py, git's in gitbase.py. The API
maps each class to a status code (api.CODES); the CLI prints the one line.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "Refused",
    "ConfigError",
    "CoordinatorError",
    "Incompatible",
    "InvalidRequest",
    "MissingSecret",
    "NodeCallError",
    "NotFound",
    "PkiError",
    "RepoError",
    "StoreError",
]


class CoordinatorError(Exception):
    """Something the coordinator cannot do; the message is one line for the user."""


class ConfigError(CoordinatorError):
    """A flag, config file or state directory is unusable."""


class NotFound(CoordinatorError):
    """No run, job or node by that name."""


class InvalidRequest(CoordinatorError):
    """A request is malformed or asks for something impossible."""


class Refused(CoordinatorError):
    """The caller may not do this: a wrong certificate, token or role."""


class AlreadyExists(CoordinatorError):
    """A node id or name is already taken."""


class RepoError(CoordinatorError):
    """The repository or its remote cannot be used."""


class MissingSecret(CoordinatorError):
    """A job's secret is no longer set on the coordinator."""


class Incompatible(CoordinatorError):
    """A node speaks a wire protocol this coordinator does not take (too old or too new)."""


class PkiError(CoordinatorError):
    """A key, certificate or certificate request cannot be used."""


class StoreError(CoordinatorError):
    """The database could not be read or written."""


class NodeCallError(CoordinatorError):
    """A call to a node failed; `code` is the gRPC status name ("" when none came back)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code
