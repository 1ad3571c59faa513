"""Generated protobuf and gRPC stubs for keygate.v1 (`make proto`); do not edit."""
