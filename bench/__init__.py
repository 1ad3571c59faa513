"""keygate's benchmarks (`make bench`): figures for the README, not timed tests.

Run `python -m bench --help`. Everything the run starts (PostgreSQL, servers, load
generators) lives in one temporary directory and is stopped and removed at the end.
"""
