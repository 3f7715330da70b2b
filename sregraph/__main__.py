"""`python -m sregraph`."""

from sregraph.cli import main

main()
