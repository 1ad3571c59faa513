"""Rate limits and credits across every worker and replica: see engine.py."""
