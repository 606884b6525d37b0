"""Labelled data sets modelyard ships (JSON lines), each generated reproducibly by the seeded
``_make_*.py`` script beside it. Read them with ``importlib.resources.files("modelyard.datasets")``."""
