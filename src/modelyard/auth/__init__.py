"""Virtual keys: the key format and validation (``keys``, pure), their table (``store``), the
per-replica cache the request path reads (``ring``) and the ``modelyard keys`` command (``cli``).

See docs/design/keys.md for the format, the hashing, and how fast a revocation reaches every replica.
"""

from .keys import (
    KEY_PREFIX,
    Duration,
    KeyFieldError,
    VirtualKey,
    add_duration,
    new_key,
    parse_duration,
    period_bounds,
    split_key,
    verify,
)
from .ring import KeyRing
from .store import KeyStore, KeyStoreError

__all__ = [
    "KEY_PREFIX",
    "Duration",
    "KeyFieldError",
    "KeyRing",
    "KeyStore",
    "KeyStoreError",
    "VirtualKey",
    "add_duration",
    "new_key",
    "parse_duration",
    "period_bounds",
    "split_key",
    "verify",
]
