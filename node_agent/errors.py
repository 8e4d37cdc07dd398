"""The node daemon's error tree, the only exceptions node_agent raises on purpose.

::

    NodeError               something the node cannot do; one line for the user
    ├── ConfigError         bad flag, config file or state directory   (exit 2)
    ├── EnrollError         joining a coordinator failed                (exit 2, or 3: unreachable)
    ├── NodeRefused         the coordinator will not have this node: the daemon stops (exit 2)
    │   ├── NodeRemoved     its certificate was revoked (flota node remove)
    │   └── Incompatible    it speaks a protocol the coordinator does not take
    ├── WorkspaceError      a git, mirror or worktree step failed       (reported per job)
    └── SpawnError          a job's command could not be started        (reported per job)

The daemon's entry point (``python -m node_agent``, which ``flota node start`` execs)
prints a NodeError as one ``flota: <message>`` line. The per-job ones never get that
far: the runner turns them into a failed result with that line as its error.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EnrollError",
    "Incompatible",
    "NodeError",
    "NodeRefused",
    "NodeRemoved",
    "SpawnError",
    "WorkspaceError",
]


class NodeError(Exception):
    """Something the node daemon cannot do; the message is one line for the user."""


class ConfigError(NodeError):
    """A flag, config file or state directory is unusable."""


class EnrollError(NodeError):
    """Joining a coordinator failed."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # the CLI exits 3 for these, as for any unreachable coordinator


class NodeRefused(NodeError):
    """The coordinator will not have this node: no retry can change that."""


class NodeRemoved(NodeRefused):
    """The coordinator no longer knows this node's certificate: it was removed from the fleet."""

    def __init__(self) -> None:
        super().__init__("this node was removed from the fleet; join again with a new token")


class Incompatible(NodeRefused):
    """The coordinator does not take this node's protocol; its message names both versions."""


class WorkspaceError(NodeError):
    """A workspace operation failed; the message is one line meant for a user."""


class SpawnError(NodeError):
    """A job's command could not be started; nothing ran."""
