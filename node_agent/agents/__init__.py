"""Agents: what runs inside a job's workspace, each in its own process."""
