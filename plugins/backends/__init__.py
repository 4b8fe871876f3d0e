"""The built-in backends, each a folder holding a ``plugin.py`` (loaded by path)."""
