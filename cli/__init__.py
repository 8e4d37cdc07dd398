"""flota command line: talks to the coordinator over gRPC only."""

import os

__version__ = "0.1.0"

# gRPC's own log lines are for daemons' logs, not for a user's terminal (errors reach the
# user as one `flota:` line). A value the user set is kept, and not passed to daemons we
# exec when it was ours.
QUIET_GRPC = "GRPC_VERBOSITY" not in os.environ
if QUIET_GRPC:
    os.environ["GRPC_VERBOSITY"] = "NONE"
