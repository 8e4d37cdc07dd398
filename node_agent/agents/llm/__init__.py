"""The built-in coding agent: ``python -m node_agent.agents.llm``, a tool loop on litellm.

Modules, one job each:

    contract    the environment the node starts it with, the report it leaves, exit codes
    loop        the agent loop: steps, budget, time, stop conditions, the final answer
    model       the model seam and its litellm adapter (the only importer of litellm)
    tools       the toolbox: tool schemas and dispatch, over files (the worktree-confined
                file tools) and commands (run_command)
    errors      the agent's error tree
    __main__    the process: signals, the report, the exit code (``main`` lives there, not
                here, so ``python -m`` runs it once)

Importing this package, or any module but ``model``'s adapter at work, never imports
litellm: the daemon side may import it cheaply (DESIGN rule 7).
"""

from __future__ import annotations

from node_agent.agents.llm.contract import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_PARTIAL,
    EXIT_SUCCESS,
    Config,
    Report,
    write_report,
)
from node_agent.agents.llm.errors import (
    AgentError,
    BadInput,
    BudgetRefused,
    ModelError,
    ModelTimeout,
    PathEscape,
    ToolError,
    TransientModelError,
    Unreachable,
)
from node_agent.agents.llm.loop import run
from node_agent.agents.llm.model import Completion, Model, ToolCall
from node_agent.agents.llm.tools import Toolbox, ToolResult

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_PARTIAL",
    "EXIT_SUCCESS",
    "AgentError",
    "BadInput",
    "BudgetRefused",
    "Completion",
    "Config",
    "Model",
    "ModelError",
    "ModelTimeout",
    "PathEscape",
    "Report",
    "ToolCall",
    "ToolError",
    "ToolResult",
    "Toolbox",
    "TransientModelError",
    "Unreachable",
    "run",
    "write_report",
]
