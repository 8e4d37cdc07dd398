"""Plans: a feature split into role tasks that run as a graph (`flota plan`, `flota run --plan`).

    schema.py    the plan file's rules, pure: problems and warnings, one line each
    context.py   what the planner sees of a repository: its file tree, key files, within a cap
    planner.py   the planner (litellm, imported only when `flota plan` runs)
    files.py     a plan file read (every problem said, each on its line) or written, the
                 repository's files (for the overlap warnings), a plan as a SubmitRun's tasks
    command.py   `flota plan`

Nothing here is imported at the CLI's start but `command.py` (the rest when a command runs).
"""
