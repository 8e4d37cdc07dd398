"""The llm agent's error tree (the agent is its own process, so its own tree).

AgentError
├── BadInput              the environment does not describe a run: exit 2
├── ModelError            the provider refused for good (auth, bad request, ...): "failed"
│   └── BudgetRefused     HTTP 402: the node's metering proxy keeps the budget: "partial"
├── TransientModelError   the provider failed this time: retried, counts a bad reply
│   ├── ModelTimeout      the call did not answer in the time it was given
│   └── Unreachable       no connection to the model server: retried a few times, not a step
└── ToolError             a tool could not do what the model asked: told back to the model
    └── PathEscape        a path leads outside the worktree

Interrupted (a BaseException, outside the tree): SIGTERM or SIGINT arrived; the run ends
"partial".

Where they stop: :meth:`tools.Toolbox.call` turns ToolError into a message for the model;
:func:`loop.run` handles the model errors and Interrupted; :func:`__main__.main` turns
BadInput into exit 2 and anything else into a "failed" report. Nothing passes ``main``.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "BadInput",
    "BudgetRefused",
    "Interrupted",
    "ModelError",
    "ModelTimeout",
    "PathEscape",
    "ToolError",
    "TransientModelError",
    "Unreachable",
]


class AgentError(Exception):
    """Something the llm agent cannot do; the message is one line."""


class BadInput(AgentError):
    """The environment does not describe a run (a variable is missing or malformed)."""


class ModelError(AgentError):
    """The model provider refused in a way retrying cannot fix (auth, bad request, ...)."""


class BudgetRefused(ModelError):
    """HTTP 402 (payment required): the call would pass the budget the node's metering
    proxy keeps for the job (or the provider's own quota); final."""


class TransientModelError(AgentError):
    """The provider failed this time (5xx, rate limit, connection, a garbled response)."""


class ModelTimeout(TransientModelError):
    """The call did not answer within the time it was given."""


class Unreachable(TransientModelError):
    """No connection to the model server (refused, a name that does not resolve, TLS); the
    message is the whole line: "cannot reach the model server at URL: why"."""


class ToolError(AgentError):
    """A tool could not do what was asked; the message is for the model."""


class PathEscape(ToolError):
    """A path leads outside the worktree (absolute, ``..``, or a symlink)."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived (a BaseException, so no library's ``except Exception`` eats it)."""
