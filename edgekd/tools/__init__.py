"""Maintenance checks anyone can run (``python -m edgekd.tools.layers``). Nothing here is imported by
the library itself."""
