"""Residency of local models: where each one lives (active / host / disk) and every move between.

``policy`` decides (pure: which models to demote so a target fits), ``manager`` owns the state and
applies the decisions (one ``MemoryManager`` per app, built in the lifespan), ``devices`` measures
the machine (budgets, RSS). Nothing here is imported at import time beyond these modules: no
torch, no threads, no globals.
"""
