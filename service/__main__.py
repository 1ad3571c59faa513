"""`python -m keygate`: the `keygate` command, for a child process started with this interpreter."""

from .entry import main

main()
