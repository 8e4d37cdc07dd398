"""`python -m cli ...` is `flota ...`."""

from cli.main import main

main()
