"""Triton's wire definitions: the ``.proto`` sources and the code generated from them.

Regenerate with ``python -m triton_kernel.protocols.proto.generate`` (needs
``grpcio-tools``); ``tests/compat`` fails when the generated files are stale.
"""
