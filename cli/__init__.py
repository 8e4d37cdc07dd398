"""flota command line: talks to the coordinator over gRPC only."""

import os

from protos.contract import FLOTA_VERSION

__all__ = ["__version__"]
__version__ = FLOTA_VERSION  # the one version of every part

# gRPC's own log lines are for daemons' logs, not for a user's terminal (errors reach the
# user as one `flota:` line). A value the user set is kept, and not passed to daemons we
# exec when it was ours.
QUIET_GRPC = "GRPC_VERBOSITY" not in os.environ
if QUIET_GRPC:
    os.environ["GRPC_VERBOSITY"] = "NONE"
