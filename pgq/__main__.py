"""`python -m pgq …` is the `pgq` command (the --reload worker starts its workers so)."""

from pgq.cli import main

main(prog_name="pgq")
