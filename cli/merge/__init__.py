"""`flota merge` and `flota pick`: a run's branches consolidated on one integration branch
by a merge queue that runs as a job on the fleet; the pull request it makes."""
