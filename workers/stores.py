"""The store of a worker process: one ``Store`` (one engine, one connection pool) per database URL.

Every task of a worker (sample, execute, score, train, round steps) and the healer reads its database through
``worker_store()``, so a process that serves several queues (``-Q sample,score``) keeps one pool per database
instead of one per task module, and the pool lives between jobs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.store import Store

_STORES: dict[str, Store] = {}


def worker_store() -> Store:
    """The store of this process's configured database (created on first use, reused by every later job)."""
    from app.config import get_settings
    from app.store import Store

    url = get_settings().database_url
    store = _STORES.get(url)
    if store is None:
        store = _STORES[url] = Store(url)
    return store
