"""How a partition's objects reach storage: in order, and never forgotten.

``OrderedWriter`` stores one kind of object (segments by first offset, or delete
logs by sequence number) one at a time, in the order they were submitted, which
is key order. So whatever of an epoch's objects is on storage at any moment is a
prefix of what it submitted, which is what a newer leader's fence (an offset and
a sequence floor) assumes.

``Settlement`` keeps the floors honest: a key settles only once its object is on
storage *and* the log has taken it in (published a segment, committed a delete
log), or once its write failed and nothing of it was acknowledged. Checkpoints
and replica releases never pass an unsettled key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from rayqueue import defaults
from rayqueue.backoff import Backoff
from rayqueue.errors import StorageUnavailable

log = logging.getLogger(__name__)

#: A blocking call run off the event loop (``asyncio.to_thread``, or the simulation's).
RunBlocking = Callable[..., Awaitable[Any]]

Step = Literal["stored", "applied"]


class Settlement:
    """Keys handed out but not settled yet. Each waits for two steps: "stored"
    (the writer is done with it) and "applied" (the log took it in, or its flush
    failed and acknowledged nothing)."""

    def __init__(self) -> None:
        self._waiting: dict[int, set[Step]] = {}

    def open(self, key: int) -> None:
        self._waiting[key] = {"stored", "applied"}

    def done(self, key: int, step: Step) -> None:
        steps = self._waiting.get(key)
        if steps is not None:
            steps.discard(step)
            if not steps:
                del self._waiting[key]

    def floor(self, next_key: int) -> int:
        """Every key below this is settled (``next_key``: the first key not handed out)."""
        return min(self._waiting, default=next_key)


@dataclass
class _Write:
    key: int
    call: Callable[..., Any]
    args: tuple[Any, ...]
    payload: Any
    done: asyncio.Future[Any]


class OrderedWriter:
    """Stores objects one at a time, in submission order.

    ``retry``: a write that meets ``StorageUnavailable`` is retried until it is
    stored (durability "replicas", where writes are acknowledged before they are
    stored: someone holds the acknowledgement). ``fatal``: a write that fails for
    good is fatal: ``on_fatal`` is told, the failed write and every later one fail,
    and none of them ever settles, so no floor passes them. That is the rule for
    writes acknowledged before they are stored (a replica holding them takes over)
    and for segments, whose fate a failure leaves unknown (the object may have
    landed: a retried send would store its messages a second time, so the leader
    stops and its successor reads what landed). Otherwise a failed write fails
    its caller, who acknowledged nothing, and the next goes on.
    """

    def __init__(
        self,
        settlement: Settlement,
        run_blocking: RunBlocking,
        *,
        retry: bool,
        fatal: bool,
        on_stored: Callable[[int], None],
        on_fatal: Callable[[BaseException], None],
        on_write_seconds: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._settlement = settlement
        self._run_blocking = run_blocking
        self._retry = retry
        self._fatal = fatal
        self._on_stored = on_stored
        self._on_fatal = on_fatal
        self._on_write_seconds = on_write_seconds
        self._queue: deque[_Write] = deque()
        self._running: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None

    def submit(self, key: int, call: Callable[..., Any], *args: Any, payload: Any = None) -> asyncio.Future[Any]:
        """Queue ``call(*args)`` (blocking; it stores object ``key``); the future holds its result."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_consume)  # an outcome nobody awaits is not an "unretrieved" error
        if self._failed is not None:
            done.set_exception(self._failed)
            return done
        self._queue.append(_Write(key, call, args, payload, done))
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run())
        return done

    async def drained(self) -> None:
        """Return once every write submitted so far is stored (or has failed)."""
        if self._queue:
            await asyncio.wait([self._queue[-1].done])

    @property
    def failed(self) -> bool:
        """Whether a write failed for good (``fatal``): nothing submitted since is stored."""
        return self._failed is not None

    def __len__(self) -> int:
        """Writes submitted and not stored yet."""
        return len(self._queue)

    def pending(self) -> dict[int, Any]:
        """Payloads of the writes not stored yet, by key (for a replica catching up)."""
        return {write.key: write.payload for write in self._queue}

    async def _run(self) -> None:
        while self._queue and self._failed is None:
            write = self._queue[0]
            try:
                result = await self._store(write)
            except BaseException as error:  # noqa: BLE001 -- every outcome is handed on
                if self._fatal:
                    self._fail_all(error)
                    return
                self._queue.popleft()
                self._settlement.done(write.key, "stored")  # failed: nothing was acknowledged
                write.done.set_exception(error)
                continue
            self._queue.popleft()
            self._settlement.done(write.key, "stored")
            self._on_stored(write.key)
            write.done.set_result(result)

    async def _store(self, write: _Write) -> Any:
        started, backoff = time.perf_counter(), Backoff(*defaults.STORE_BACKOFF_S)
        while True:
            try:
                result = await self._run_blocking(write.call, *write.args)
            except StorageUnavailable as error:
                if not self._retry:
                    raise
                log.warning("storage unavailable (%s); retrying a write already acknowledged", error)
                await asyncio.sleep(backoff.next())
                continue
            seconds = time.perf_counter() - started
            self._on_write_seconds(seconds)
            if seconds > defaults.SLOW_WRITE_S:
                log.warning("storing object %d took %.1f s", write.key, seconds)
            return result

    def _fail_all(self, error: BaseException) -> None:
        self._failed = error
        log.error("a write failed and its outcome matters: %r", error)
        self._on_fatal(error)
        for write in self._queue:
            if not write.done.done():
                write.done.set_exception(error)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
