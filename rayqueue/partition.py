"""A partition at work: its log, its storage, group commit and long polling.

``PartitionService`` is what a partition actor hosts. It runs on one asyncio
event loop and knows nothing of Ray, so it runs in unit tests as it is, and one
actor process could later host many of them.

The rule it keeps: persist, then publish. A send is appended to the log (and so
becomes receivable) only after its segment is on storage; a delete takes effect
only after its delete log is on storage. Blocking storage calls run in threads
so that the event loop keeps serving receives while a write is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayqueue import defaults
from rayqueue.config import QueueConfig
from rayqueue.errors import MessageTooLarge
from rayqueue.group_commit import GroupCommit
from rayqueue.log import DeleteTicket, PartitionLog
from rayqueue.message import PartitionStats
from rayqueue.metrics import NoMetrics, PartitionMetrics
from rayqueue.storage import PartitionStore
from rayqueue.storage.partition_store import Checkpoint

log = logging.getLogger(__name__)

#: Body bytes one group commit writes at most (one segment object).
MAX_SEGMENT_BYTES = 64 * 1024 * 1024
#: Gauges of visible and in-flight messages are refreshed at most this often.
STATE_REPORT_INTERVAL_S = 1.0


class PartitionService:
    def __init__(
        self,
        config: QueueConfig,
        partition: int,
        store: PartitionStore,
        clock: Callable[[], float] = time.time,
        checkpoint_every: int = defaults.CHECKPOINT_EVERY,
        metrics: PartitionMetrics | None = None,
    ) -> None:
        self.config = config
        self.partition = partition
        self._store = store
        self._clock = clock
        self._checkpoint_every = checkpoint_every
        self._metrics = metrics or NoMetrics()
        self._state_reported_at = 0.0
        self._log = PartitionLog(
            partition,
            quota=config.partition_quota(partition),
            retention_s=config.retention_s,
            dedup_window_s=defaults.DEDUP_WINDOW_S,
        )
        # Items are (rows, whether their ids are explicit).
        self._sends: GroupCommit[tuple[pa.Table, bool]] = GroupCommit(
            self._flush_sends, weight=lambda item: item[0].nbytes, max_weight=MAX_SEGMENT_BYTES
        )
        self._deletes: GroupCommit[DeleteTicket] = GroupCommit(self._flush_deletes)
        self._next_delete_seq = 0
        # First offset / delete sequence of a write in flight: a checkpoint must not claim them.
        self._writing_offset: int | None = None
        self._writing_delete_seq: int | None = None
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._pending_ids: dict[str, asyncio.Future[None]] = {}
        self._changed = asyncio.Event()
        self.objects_recovered = 0

    def recover(self) -> None:
        """Take over the partition under a new epoch and load what it has on storage.

        Blocking; call before serving.
        """
        recovered = self._store.take_over()
        self._log.load(recovered.segments, recovered.deleted_offsets, recovered.next_offset, self._clock())
        self._next_delete_seq = recovered.next_delete_seq
        self.objects_recovered = recovered.objects_read

    @property
    def epoch(self) -> int:
        return self._store.epoch

    # -------------------------------------------------------------------- sends

    async def send(self, rows: pa.Table, dedup: bool) -> None:
        """Store ``rows`` (SEND_SCHEMA); return once they are on storage.

        With ``dedup``, rows whose id was sent in the dedup window are skipped
        (and the call waits for them if they are still being stored).
        """
        self._check_sizes(rows)
        earlier: list[asyncio.Future[None]] = []
        fresh_ids: list[str] = []
        if dedup:
            rows, fresh_ids, earlier = self._drop_duplicates(rows)
        if rows.num_rows:
            self._log.reserve(self.config.name, rows.num_rows, self._clock())
            stored = asyncio.ensure_future(self._sends.submit((rows, dedup)))
            for message_id in fresh_ids:
                self._pending_ids[message_id] = stored
            try:
                await stored
                self._log.remember_ids(fresh_ids, self._clock())
            finally:
                for message_id in fresh_ids:
                    self._pending_ids.pop(message_id, None)
        if earlier:
            await asyncio.gather(*earlier)

    def _check_sizes(self, rows: pa.Table) -> None:
        sizes = pc.binary_length(rows.column("body"))
        limit = self.config.max_message_bytes
        too_large = pc.greater(sizes, limit)
        if pc.any(too_large).as_py():
            index = pc.index(too_large, True).as_py()
            raise MessageTooLarge(self.config.name, sizes[index].as_py(), limit, index)

    def _drop_duplicates(self, rows: pa.Table) -> tuple[pa.Table, list[str], list[asyncio.Future[None]]]:
        ids = rows.column("id").to_pylist()
        seen = self._log.seen_ids(ids, self._clock())
        keep, fresh, earlier, batch_ids = [], [], [], set()
        for message_id, was_seen in zip(ids, seen):
            pending = self._pending_ids.get(message_id)
            if pending is not None:
                earlier.append(pending)
            new = not was_seen and pending is None and message_id not in batch_ids
            keep.append(new)
            if new:
                fresh.append(message_id)
                batch_ids.add(message_id)
        return rows.filter(pa.array(keep, pa.bool_())), fresh, earlier

    async def _flush_sends(self, items: list[tuple[pa.Table, bool]]) -> None:
        count = sum(rows.num_rows for rows, _ in items)
        started = time.perf_counter()
        try:
            segment = self._log.stamp(pa.concat_tables([rows for rows, _ in items]), self._clock())
            self._writing_offset = segment.column(0)[0].as_py()
            name = await asyncio.to_thread(self._store.write_segment, segment)
        except BaseException:
            self._log.release(count)
            raise
        finally:
            self._writing_offset = None
        self._metrics.storage_write(time.perf_counter() - started)
        self._log.publish(segment, name, explicit_ids=any(dedup for _, dedup in items))
        self._metrics.sent(count, pc.sum(pc.binary_length(segment.column("body"))).as_py())
        self._report_state()
        self._notify()

    # ----------------------------------------------------------------- receives

    async def receive(self, max_messages: int, wait_s: float, visibility_s: float | None) -> pa.Table:
        """Up to ``max_messages`` deliveries; waits up to ``wait_s`` for the first one."""
        visibility = self.config.visibility_timeout_s if visibility_s is None else visibility_s
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        while True:
            delivery = self._log.receive(max_messages, self._clock(), visibility)
            remaining = give_up - loop.time()
            if delivery.num_rows or remaining <= 0:
                if delivery.num_rows:
                    redelivered = pc.sum(pc.greater(delivery.column("receive_count"), 1)).as_py() or 0
                    self._metrics.received(delivery.num_rows, redelivered)
                    self._report_state()
                return delivery
            await self._wait_for_change(remaining)

    async def wait_visible(self, wait_s: float) -> bool:
        """Whether a message is visible, waiting up to ``wait_s`` for one. Takes nothing."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        while not self._log.has_visible(self._clock()):
            remaining = give_up - loop.time()
            if remaining <= 0:
                return False
            await self._wait_for_change(remaining)
        return True

    async def _wait_for_change(self, timeout: float) -> None:
        # Wake on new messages, or when the earliest visibility timeout may have run out.
        until_deadline = self._log.next_deadline() - self._clock()
        timeout = max(min(timeout, until_deadline), 0.0)
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ deletes

    async def delete(self, offsets: np.ndarray, tokens: np.ndarray, receipts: list[str]) -> None:
        """Delete by receipt; return once the delete is on storage. All or nothing."""
        ticket = self._log.prepare_delete(offsets, tokens, receipts)
        if len(ticket.offsets):
            await self._deletes.submit(ticket)

    async def _flush_deletes(self, tickets: list[DeleteTicket]) -> None:
        offsets = np.concatenate([ticket.offsets for ticket in tickets])
        seq = self._writing_delete_seq = self._next_delete_seq
        self._next_delete_seq += 1
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._store.write_deletes, offsets, seq)
        except BaseException:
            for ticket in tickets:
                self._log.abort_delete(ticket)
            self._notify()
            raise
        finally:
            self._writing_delete_seq = None
        self._metrics.storage_write(time.perf_counter() - started)
        for ticket in tickets:
            self._log.commit_delete(ticket)
        self._metrics.deleted(len(offsets))
        self._report_state()
        self._since_checkpoint += 1
        self._maybe_checkpoint()

    # -------------------------------------------------------------- checkpoints

    def _maybe_checkpoint(self) -> None:
        due = self._since_checkpoint + self._log.dropped_segments >= self._checkpoint_every
        if due and (self._checkpointing is None or self._checkpointing.done()):
            self._checkpointing = asyncio.ensure_future(self.checkpoint())

    async def checkpoint(self) -> None:
        """Fold delete logs and drop dead segments on storage. Failures are logged and
        retried at the next opportunity: the partition keeps serving either way."""
        # Taken without awaiting, so the snapshot is consistent; what is being
        # written right now is left to the next checkpoint.
        segments, deleted = self._log.live_segments(self._clock())
        checkpoint = Checkpoint(
            seq=self._next_delete_seq if self._writing_delete_seq is None else self._writing_delete_seq,
            epoch=self.epoch,
            next_offset=self._log.next_offset if self._writing_offset is None else self._writing_offset,
            segments=segments,
            deleted=deleted,
        )
        since, dropped = self._since_checkpoint, self._log.dropped_segments
        try:
            await asyncio.to_thread(self._store.write_checkpoint, checkpoint)
        except Exception:
            log.exception("checkpoint of %s partition %d failed; will retry", self.config.name, self.partition)
            return
        self._since_checkpoint -= since
        self._log.dropped_segments -= dropped

    def change_visibility(self, offset: int, token: int, receipt: str, timeout_s: float) -> None:
        self._log.change_visibility(offset, token, receipt, timeout_s, self._clock())
        self._notify()

    # -------------------------------------------------------------------- state

    def stats(self) -> PartitionStats:
        stats = self._log.stats(self._clock())
        self._metrics.state(stats.visible, stats.in_flight, stats.stored_bytes)
        return PartitionStats(self.partition, stats.visible, stats.in_flight, stats.stored_bytes)

    def _report_state(self) -> None:
        # Counting in-flight messages scans the log: at most once a second.
        now = time.monotonic()
        if now - self._state_reported_at >= STATE_REPORT_INTERVAL_S:
            self._state_reported_at = now
            self.stats()

