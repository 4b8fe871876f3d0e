"""Triton's metrics endpoint: Prometheus text on ``--metrics-port``."""
