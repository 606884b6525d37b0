"""Accounting: what each response cost, and the spend rows behind the /spend reports.

``pricing`` decides (pure), ``store`` keeps rows in SQLite or PostgreSQL, ``writer`` moves rows
from the request path to the store in batches, spooling to a local file while the database is down.
See docs/design/spend.md.
"""

from .pricing import cost
from .store import ReportRow, SpendRow, SpendStore, SpendStoreError
from .writer import SpendWriter

__all__ = ["ReportRow", "SpendRow", "SpendStore", "SpendStoreError", "SpendWriter", "cost"]
