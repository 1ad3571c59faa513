"""keygate: API keys and authorization decisions over gRPC."""
