"""`python -m dstore` runs the command line."""

from dstore.cli import main

main()
