"""Live progress for ``GET /analyses/{id}/events``: one poller per API process for all the open streams.

A stream used to read its analysis every ``SSE_POLL_S`` in a thread-pool call of its own, so 50 streams were 100
database reads a second, each needing a worker thread and then the event loop — the same event loop that every other
request waits for. :class:`AnalysisWatch` reads every analysis that some stream follows in one query per interval
(one thread-pool call, whatever the number of streams) and wakes the streams of the analyses that changed.

Ownership is checked when a stream starts (the route's first read, as the key's owner), and again by the poller's
query. A followed analysis that disappears (its dataset was deleted) ends its streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool

log = logging.getLogger("taskgauge.api")

Snapshot = dict[str, Any]
#: ``load_many({analysis_id: owner_id})``: the current snapshot of each of these analyses that still exists (and
#: belongs to that owner), by id; runs in a worker thread.
LoadMany = Callable[[dict[str, str]], dict[str, Snapshot]]


class Followed:
    """One analysis that streams follow: its latest snapshot, and an event set (then replaced) when it changes."""

    __slots__ = ("owner_id", "snapshot", "changed", "gone", "streams")

    def __init__(self, owner_id: str, snapshot: Snapshot) -> None:
        self.owner_id = owner_id
        self.snapshot = snapshot
        self.changed = asyncio.Event()
        self.gone = False
        self.streams = 0

    def _publish(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def update(self, snapshot: Snapshot | None) -> None:
        if snapshot is None:
            self.gone = True
            self._publish()
        elif snapshot != self.snapshot:
            self.snapshot = snapshot
            self._publish()


class AnalysisWatch:
    """Created by the API's lifespan; used from the event loop only (no locks needed)."""

    def __init__(self, load_many: LoadMany, interval_s: float) -> None:
        self._load_many = load_many
        self._interval_s = interval_s
        self._followed: dict[str, Followed] = {}
        self._poller: asyncio.Task[None] | None = None

    def follow(self, owner_id: str, analysis_id: str, first: Snapshot) -> Followed:
        """Start following ``analysis_id`` of ``owner_id`` (the caller read it as that owner: ``first`` is its
        snapshot now). Pair with :meth:`unfollow`."""
        entry = self._followed.get(analysis_id)
        if entry is None:
            entry = self._followed[analysis_id] = Followed(owner_id, first)
        entry.streams += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="taskgauge-sse-poller")
        return entry

    def unfollow(self, analysis_id: str) -> None:
        entry = self._followed.get(analysis_id)
        if entry is not None:
            entry.streams -= 1
            if entry.streams <= 0:
                del self._followed[analysis_id]

    async def close(self) -> None:
        if self._poller is not None and not self._poller.done():
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass

    async def _poll(self) -> None:
        while self._followed:
            await asyncio.sleep(self._interval_s)
            owners = {analysis_id: entry.owner_id for analysis_id, entry in self._followed.items()}
            try:
                current = await run_in_threadpool(self._load_many, owners)
            except (OperationalError, PoolTimeout):  # the database is busy: the streams wait for the next round
                continue
            except Exception:  # noqa: BLE001 - a poller that died would leave every stream waiting forever
                log.warning("reading the analyses that SSE streams follow failed", exc_info=True)
                continue
            for analysis_id in owners:
                entry = self._followed.get(analysis_id)
                if entry is not None:
                    entry.update(current.get(analysis_id))
