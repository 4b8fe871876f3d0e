"""Protocol frontends (HTTP, later gRPC and metrics) and the wire definitions they share."""
