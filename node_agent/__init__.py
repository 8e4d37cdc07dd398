"""flota node daemon: facts, announce, servicer, job runner, workspace and agents."""

from protos.contract import FLOTA_VERSION

__all__ = ["__version__"]
__version__ = FLOTA_VERSION  # the one version of every part
