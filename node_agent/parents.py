"""The parents of a node's job processes, and which one starts a job, with what argv.

Every job is started by the node's keeper (:mod:`node_agent.keeper`), but an llm job is
forked by the llm agent host when the node has one (:mod:`node_agent.agents.llm.host`:
``agent_idle_s`` > 0), already warm; a shell command is executed directly when it is
plain words, else through bash (:mod:`node_agent.commandline`).
"""

from __future__ import annotations

from pathlib import Path

from node_agent.agents.base import Command
from node_agent.agents.llm_agent import AGENT_ARGV, agent_host
from node_agent.commandline import argv_for
from node_agent.process import KeeperClient

__all__ = ["Parents"]


class Parents:
    def __init__(self, agent_idle_s: float = 0.0) -> None:
        self.keeper = KeeperClient()
        self.agent_host = agent_host(agent_idle_s) if agent_idle_s > 0 else None

    def for_command(self, command: Command, cwd: Path, env: dict[str, str]) -> tuple[KeeperClient, list[str]]:
        """Who starts ``command`` and its argv (``env`` gets what bash would have added)."""
        if command.warm and self.agent_host is not None:
            return self.agent_host, list(AGENT_ARGV)
        return self.keeper, argv_for(command.line, cwd, env)

    async def close(self) -> None:
        """Let both go: each leaves once the jobs it keeps have ended."""
        await self.keeper.close()
        if self.agent_host is not None:
            await self.agent_host.close()
