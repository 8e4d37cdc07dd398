"""The coordinator's error tree.

CoordinatorError         a request or setting the coordinator cannot honour (one line)
├── ConfigError          bad flag, config file or state directory
├── NotFound             unknown run, job or node              -> NOT_FOUND
├── InvalidRequest       malformed request                      -> INVALID_ARGUMENT
└── RepoError            the repo or its remote cannot be used  -> FAILED_PRECONDITION
"""

from __future__ import annotations

__all__ = ["ConfigError", "CoordinatorError", "InvalidRequest", "NotFound", "RepoError"]


class CoordinatorError(Exception):
    """Something the coordinator cannot do; the message is one line for the user."""


class ConfigError(CoordinatorError):
    """A flag, config file or state directory is unusable."""


class NotFound(CoordinatorError):
    """No run, job or node by that name."""


class InvalidRequest(CoordinatorError):
    """A request is malformed or asks for something impossible."""


class RepoError(CoordinatorError):
    """The repository or its remote cannot be used."""
