"""The node daemon's error tree.

NodeError
├── ConfigError      bad flag, config file or state directory
├── EnrollError      joining a coordinator failed
└── (workspace.WorkspaceError, raised by git operations, is reported per job)
"""

from __future__ import annotations

__all__ = ["ConfigError", "EnrollError", "NodeError"]


class NodeError(Exception):
    """Something the node daemon cannot do; the message is one line for the user."""


class ConfigError(NodeError):
    """A flag, config file or state directory is unusable."""


class EnrollError(NodeError):
    """Joining a coordinator failed."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # the CLI exits 3 for these, as for any unreachable coordinator
