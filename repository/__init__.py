"""Repository sources as plugins: where model folders come from."""
