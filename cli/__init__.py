"""flota command line: talks to the coordinator over gRPC only."""
