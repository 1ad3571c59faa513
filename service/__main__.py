"""`python -m keygate`: the `keygate` command, for a child process started with this interpreter."""

from .cli import main

main()
