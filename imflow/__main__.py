"""``python -m imflow``: the imflow command line (imflow/cli.py)."""

from imflow.cli import main

main()
