"""The Batch API: files and batches stored per key, items run on the capacity interactive traffic leaves.

- ``jsonl.py``     PURE: input lines → items / bad lines / batch errors; output line shapes
- ``policy.py``    PURE: how many items of a model may start now
- ``states.py``    the batch's states and moves
- ``multipart.py`` PURE: the upload's multipart/form-data, incrementally, with limits
- ``store.py``     the rows (files, batches, batch_items) — the single owner, tenancy in the queries
- ``blobs.py``     the files' bytes under ``<data_dir>/files``
- ``runner.py``    validation, scheduling, running items, group commit; ``finalize.py`` the files
- ``service.py``   the API's operations

See docs/design/batch.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from modelyard.epoch import to_us


def batch_price(settings: Any) -> Callable[[str], Decimal]:
    """model name → the share of its price a batch item pays (1 − ``models[].batch_discount``)."""
    shares = {m.name: Decimal(1) - Decimal(repr(m.batch_discount)) for m in settings.models}
    half = Decimal("0.5")
    return lambda model: shares.get(model, half)


def build_batches(services: Any, *, wall_clock: Callable[[], dt.datetime]) -> Any:
    """The BatchService over ``services`` (None when ``batch.enabled`` is off)."""
    settings = services.settings
    cfg = settings.batch
    if not cfg.enabled:
        return None
    from modelyard.backends.local_models import data_dir
    from modelyard.batch.blobs import Blobs
    from modelyard.batch.runner import Runner
    from modelyard.batch.service import BatchService
    from modelyard.batch.store import BatchStore
    from modelyard.db import Database, database_url

    home = data_dir(settings)
    owned = None
    db = services.db
    if db is None:  # no spend, no keys: the batches still need the database
        home.mkdir(parents=True, exist_ok=True)
        db = owned = Database(database_url(settings))
    store = BatchStore(db)
    blobs = Blobs(home / "files")

    def now_us() -> int:
        return to_us(wall_clock())

    runner = Runner(services, store, blobs, cfg, clock=services.clock, now_us=now_us)
    return BatchService(cfg, store, blobs, runner, now_us=now_us, owned_db=owned)
