"""The protssl gRPC server: a thin face over the protssl library (`python -m service`, `protssl serve`)."""
