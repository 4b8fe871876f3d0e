"""The example model repository (``models/``) that ``triton-kernel serve`` uses by default."""
