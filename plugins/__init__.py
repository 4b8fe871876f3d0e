"""Plugins shipped with the package; ``backends/`` is the default backend directory."""
