"""Compiled cores, built from the top-level ``_native/*.pyx`` sources by ``setup.py``.

Nothing here imports the API layer; the API modules import from here.
"""
