"""The in-process key cache that the request path reads: no database query per request.

Every replica loads all keys once (``start``), then polls ``KeyStore.changed_since`` every
``refresh_interval_s``. A key created or revoked through another replica (or the CLI) is therefore
seen here within about one interval plus one query; a key created *on this replica* is ``put``
at once. A request that carries a well-formed but unknown id may be a key made a moment ago
elsewhere: ``find_fresh`` then waits for a refresh that began after the miss (so such a key is
always found), but starts at most one per ``miss_refresh_min_s`` however many garbage ids arrive,
and concurrent misses share it, so invalid keys cannot turn into a database load.

Why an overlap: ``updated_us`` is a timestamp, not a commit sequence. A transaction can commit after
one with a larger ``updated_us`` was already read, two replicas can write the same microsecond, and
clocks drift. Each poll therefore re-reads ``updated_us >= high - overlap`` (``high`` = the largest
value read so far) and de-duplicates by id. A change is missed only if it becomes visible more than
``overlap_s`` (default 30 s) "late", i.e. with commit delay plus clock skew over 30 s.

Merging is monotone: revocation is final (a revoked entry is never replaced by an unrevoked one,
whatever the order in which a stale read and a local ``put`` arrive); otherwise the larger
``updated_us`` wins, a tie going to the later arrival (a re-read of the same row).

When the database is unreachable the ring keeps serving its last good view (and keeps retrying;
failures are logged at most once per ``log_every_s``): a database outage must not lock every
client out, at the cost that revocations made meanwhile elsewhere are not seen until it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from .keys import VirtualKey, split_key, verify
from .store import KeyStore, KeyStoreError

log = logging.getLogger("modelyard.auth")


def _merge(old: VirtualKey | None, new: VirtualKey) -> VirtualKey:
    if old is None:
        return new
    if (old.revoked_at is None) != (new.revoked_at is None):
        return old if old.revoked_at is not None else new  # revocation is final
    return new if new.updated_us >= old.updated_us else old


class KeyRing:
    """``ring = KeyRing(KeyStore(db)); await ring.start()``; per request ``ring.find(plaintext)``
    (sync) or ``await ring.find_fresh(plaintext)``; ``await ring.aclose()`` at shutdown."""

    def __init__(
        self,
        store: KeyStore,
        *,
        refresh_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        miss_refresh_min_s: float = 0.25,
        overlap_s: float = 30.0,
        log_every_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if refresh_interval_s <= 0 or miss_refresh_min_s < 0 or overlap_s < 0:
            raise ValueError("refresh_interval_s must be > 0; miss_refresh_min_s and overlap_s >= 0")
        self._store = store
        self._interval = refresh_interval_s
        self._clock = clock
        self._miss_min = miss_refresh_min_s
        self._sleep = sleep  # the miss path's waits (the refresh loop's own interval uses asyncio.sleep)
        self._overlap_us = int(overlap_s * 1_000_000)
        self._log_every = log_every_s
        self._keys: dict[str, VirtualKey] = {}
        self._loaded = False
        self._high_us = 0  # the largest updated_us read from the store (never from put)
        self._last_refresh_start: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failures = 0  # consecutive failed refreshes
        self._last_error_log: float | None = None
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every key, then refresh in the background. A failed load raises ``KeyStoreError``
        after the background task is started, so the ring keeps trying while its owner carries on."""
        try:
            await self.refresh()
        except KeyStoreError:
            self._failures += 1
            raise
        finally:
            if self._task is None and not self._closed:
                self._task = asyncio.create_task(self._loop(), name="modelyard-keyring")

    async def aclose(self) -> None:
        self._closed = True
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, KeyStoreError):
                    await task
        self._task = None

    @property
    def loaded(self) -> bool:
        """Whether one full load has succeeded (before that the ring knows only ``put`` keys)."""
        return self._loaded

    # --- reads (the request path) ------------------------------------------------------------

    def find(self, plaintext: str) -> VirtualKey | None:
        """The key whose plaintext this is, from the cache only; None if malformed, unknown or the
        secret is wrong. Expiry and revocation are the caller's to check (distinct messages)."""
        parts = split_key(plaintext)
        if parts is None:
            return None
        key = self._keys.get(parts[0])
        if key is None or not verify(key, parts[1]):
            return None
        return key

    async def find_fresh(self, plaintext: str) -> VirtualKey | None:
        """``find``; on a well-formed unknown id, wait for a refresh that *began after the miss*
        (one made a moment ago elsewhere is then found), joining one in flight or starting one —
        but never starting more than one per ``miss_refresh_min_s``: a miss soon after a refresh
        waits out the rest of that interval, so garbage ids cost waiting, not queries."""
        found = self.find(plaintext)
        if found is not None:
            return found
        parts = split_key(plaintext)
        if parts is None or parts[0] in self._keys:  # malformed, or a known id with a wrong secret
            return None
        t_miss = self._clock()
        for _ in range(4):  # bounded: join (old), wait, start/join (new)
            last = self._last_refresh_start
            if self._refreshing():
                try:
                    await self.refresh()  # joins the one in flight
                except KeyStoreError as exc:
                    self._failed(exc)
                    return None
                if last is not None and last >= t_miss:
                    return self.find(plaintext)
                continue  # it began before the miss: may not have seen the key
            if last is not None and last >= t_miss:
                return self.find(plaintext)  # one that began after the miss has completed
            wait = (last + self._miss_min - self._clock()) if last is not None else 0.0
            if wait > 0.002:  # event loops may wake a little early (uvloop: 1 ms timers): no busy re-sleeps
                await self._sleep(wait + 0.001)
                continue
            try:
                await self.refresh()
            except KeyStoreError as exc:
                self._failed(exc)
                return None
            return self.find(plaintext)
        return self.find(plaintext)

    def get(self, key_id: str) -> VirtualKey | None:
        return self._keys.get(key_id)

    def keys(self) -> list[VirtualKey]:
        return list(self._keys.values())

    # --- updates -----------------------------------------------------------------------------

    def put(self, key: VirtualKey) -> None:
        """Apply a change made on this replica now, without waiting for the next poll."""
        self._keys[key.id] = _merge(self._keys.get(key.id), key)

    async def refresh(self) -> None:
        """One refresh (a full load until one succeeds, then incremental); concurrent callers share
        the one in flight. Raises ``KeyStoreError``; the view is kept as it was on failure."""
        task = self._inflight
        if task is None or task.done():
            task = asyncio.create_task(self._refresh_once())
            self._inflight = task
            task.add_done_callback(self._refresh_done)
        await asyncio.shield(task)  # a cancelled waiter must not cancel the refresh the others wait for

    def _refreshing(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone

    async def _refresh_once(self) -> None:
        self._last_refresh_start = self._clock()
        if self._loaded:
            rows = await self._store.changed_since(self._high_us - self._overlap_us - 1)  # i.e. >= high - overlap
        else:
            rows = await self._store.list(include_revoked=True)
        for key in rows:
            self._keys[key.id] = _merge(self._keys.get(key.id), key)
            self._high_us = max(self._high_us, key.updated_us)
        self._loaded = True
        if self._failures:
            log.info("key store reachable again after %d failed refreshes", self._failures)
            self._failures = 0
            self._last_error_log = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except KeyStoreError as exc:
                self._failed(exc)
            except Exception:  # never let the loop die: a dead loop means revocations stop arriving
                log.exception("key ring refresh failed unexpectedly")

    def _failed(self, exc: KeyStoreError) -> None:
        self._failures += 1
        now = self._clock()
        if self._last_error_log is None or now - self._last_error_log >= self._log_every:
            self._last_error_log = now
            log.warning(
                "key ring: %s (%d consecutive failures; serving the last view of %d keys)",
                exc.message, self._failures, len(self._keys),
            )  # fmt: skip
