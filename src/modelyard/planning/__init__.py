"""Capacity: what to buy and how to place models before moving anything.

``plan`` (planner.py: FFD and the exact HiGHS programme; spec.py, catalogue.py), ``analyze``
(history.py reads the spend store and tier events; analyze.py decides; report.py draws) and
``simulate`` (simulate.py, reusing the memory manager's own pure policy). Every decision here is
pure; the CLIs (``*_cli.py``) read, call and write. Design notes: docs/design/planner.md,
analyze.md, simulate.md.
"""
