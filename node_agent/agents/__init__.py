"""Agents: what runs inside a job's workspace, each in its own process.

The daemon's side of every agent sits behind one small protocol (:mod:`.base`: the
command that runs a job, and how its report is read once it ended); :mod:`.launch`
maps a job's ``agent`` to one (:mod:`.shell`: the shell agent and agent CLIs;
:mod:`.llm_agent`: how flota's own agent is started). The llm agent itself is the
program ``python -m node_agent.agents.llm``, which the daemon never imports.

This package imports nothing on purpose: the agent programs load it too.
"""
