"""flota node daemon: facts, announce, servicer, job runner, workspace and agents."""

__version__ = "0.1.0"
