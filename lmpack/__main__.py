"""`python -m lmpack` runs the command line interface."""
from lmpack.cli import main

main()
