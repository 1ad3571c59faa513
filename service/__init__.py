"""keygate: API keys and authorization decisions over gRPC."""

import os

# Before anything imports grpc, whose C core reads this once: since grpc logs through absl, it writes
# a raw INFO line on stderr for every failed TLS handshake, so any peer could fill the log with lines
# that are not JSON. ERROR is the level grpc documents as its default; an operator's own setting wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
