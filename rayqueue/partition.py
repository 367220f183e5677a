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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayqueue import defaults
from rayqueue.config import QueueConfig
from rayqueue.errors import MessageTooLarge, PartitionFenced, PartitionRetired, StorageCorrupt, StorageUnavailable
from rayqueue.group_commit import GroupCommit
from rayqueue.log import DeleteTicket, PartitionLog
from rayqueue.message import PartitionStats
from rayqueue.metrics import NoMetrics, PartitionMetrics
from rayqueue.replication import HeldWrites, Replicator
from rayqueue.storage import PartitionStore, RecoveredPartition
from rayqueue.storage.format import body_sizes
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
        replicator: Replicator | None = None,
    ) -> None:
        self.config = config
        self.partition = partition
        self._store = store
        self._clock = clock
        self._checkpoint_every = checkpoint_every
        self._metrics = metrics or NoMetrics()
        self._state_reported_at = 0.0
        self._replicator = replicator
        # With durability "replicas", writes are acknowledged once the replicas hold
        # them and stored in the background; otherwise replicas are standbys only.
        self._replicas = replicator if config.durability == "replicas" else None
        self._log = PartitionLog(
            partition,
            quota=config.partition_quota(partition),
            retention_s=config.retention_s,
            dedup_window_s=defaults.DEDUP_WINDOW_S,
            memory_budget=config.partition_memory_bytes,
        )
        # Items are (rows, whether their ids are explicit).
        self._sends: GroupCommit[tuple[pa.Table, bool]] = GroupCommit(
            self._flush_sends, weight=lambda item: item[0].nbytes, max_weight=MAX_SEGMENT_BYTES
        )
        self._deletes: GroupCommit[DeleteTicket] = GroupCommit(self._flush_deletes)
        self._next_delete_seq = 0
        # First offsets of segments, and sequence numbers of delete logs, not stored yet:
        # a checkpoint must not claim them, and replicas must keep holding them.
        self._unstored_segments: dict[int, pa.RecordBatch] = {}
        self._unstored_deletes: dict[int, np.ndarray] = {}
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._pending_ids: dict[str, asyncio.Future[None]] = {}
        self._sent_total = 0
        #: Scaling in: refuse sends, keep serving receives and deletes.
        self.retiring = False
        #: A newer leader took over (storage or a replica said so): serve nothing more.
        self.fenced = False
        self._watching: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.objects_recovered = 0

    def recover(self, held: HeldWrites | None = None) -> None:
        """Take over the partition under a new epoch and load what it has on storage,
        plus what a replica ``held`` (acknowledged by the old leader, maybe not stored).

        Blocking; call before serving.
        """
        recovered = self._store.take_over()
        if held is not None:
            self._store_held(recovered, held)
        now = self._clock()
        for name, table in recovered.segments:  # read one at a time: memory stays in budget
            self._log.load_segment(name, table, recovered.deleted_offsets, now)
        self._log.finish_load(recovered.next_offset, now)
        self._next_delete_seq = recovered.next_delete_seq
        self.objects_recovered = self._store.objects_read

    def _store_held(self, recovered: RecoveredPartition, held: HeldWrites) -> None:
        # Under this leader's epoch; a copy the old leader stored before the takeover
        # was recovered already (same first offset), one it stores later is fenced off.
        # One below the checkpoint's floor that storage no longer has was stored, then
        # emptied by deletes and removed: storing it again would bring deleted messages back.
        stored = recovered.segments.first_offsets()
        for first, batch in sorted(held.segments.items()):
            if first not in stored and first >= recovered.checkpointed_below:
                name = self._store.write_segment(batch)
                recovered.segments.add(name, pa.Table.from_batches([batch]))
                recovered.next_offset = max(recovered.next_offset, first + batch.num_rows)
        if held.deletes:
            offsets = np.unique(np.concatenate(list(held.deletes.values())))
            self._store.write_deletes(offsets, recovered.next_delete_seq)
            recovered.next_delete_seq += 1
            recovered.deleted_offsets = np.union1d(recovered.deleted_offsets, offsets)

    @property
    def epoch(self) -> int:
        return self._store.epoch

    def watch_leadership(self, interval_s: float = defaults.LEADERSHIP_CHECK_INTERVAL_S) -> None:
        """Look for a newer leader's claim every ``interval_s`` (from the running event
        loop, once): writes find out at once, but a leader that only serves receives
        would otherwise hand out messages its successor has had deleted."""
        if self._watching is None or self._watching.done():
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # called outside the loop (a synchronous actor method): next time
                return
            self._watching = asyncio.ensure_future(self._watch(interval_s))

    async def _watch(self, interval_s: float) -> None:
        while not self.fenced:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self._store.check_leader)
            except PartitionFenced:
                log.warning("%s partition %d: a newer leader took over; serving nothing more", self.config.name, self.partition)
                self.fenced = True
            except StorageUnavailable:
                pass  # writes and the next look will tell

    # -------------------------------------------------------------------- sends

    async def send(self, rows: pa.Table, dedup: bool) -> None:
        """Store ``rows`` (SEND_SCHEMA); return once they are on storage.

        With ``dedup``, rows whose id was sent in the dedup window are skipped
        (and the call waits for them if they are still being stored).
        """
        if self.retiring:
            raise PartitionRetired(self.config.name, self.partition)
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
        sizes = body_sizes(rows.column("body"))
        limit = self.config.max_message_bytes
        if len(sizes) and sizes.max() > limit:
            index = int(np.argmax(sizes > limit))
            raise MessageTooLarge(self.config.name, int(sizes[index]), limit, index)

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
        try:
            segment = self._log.stamp(pa.concat_tables([rows for rows, _ in items]), self._clock())
            first = segment.column(0)[0].as_py()
            self._unstored_segments[first] = segment
            storing = self._write(self._store.write_segment, segment, unstored=self._unstored_segments, key=first)
            stored = not (self._replicas is not None and await self._replicas.segment(segment))
            name = await storing if stored else self._store.segment_name(first)
        except BaseException as error:
            self._log.release(count)
            self.fenced |= isinstance(error, PartitionFenced)
            raise
        self._log.publish(segment, name, explicit_ids=any(dedup for _, dedup in items), stored=stored)
        self._sent_total += count
        self._metrics.sent(count, int(body_sizes(segment.column("body")).sum()))
        self._report_state()
        self._notify()

    def _write(self, write: Callable[..., Any], *args: Any, unstored: dict[int, Any], key: int) -> asyncio.Future[Any]:
        """Store in a thread; ``unstored[key]`` is dropped once done. With durability
        "replicas" the write runs on its own and is retried until it succeeds, since
        it was acknowledged already."""

        async def attempt() -> Any:
            started, delay = time.perf_counter(), 0.1
            try:
                while True:
                    try:
                        result = await asyncio.to_thread(write, *args)
                        break
                    except StorageUnavailable:
                        if self._replicas is None:
                            raise
                        log.warning("%s partition %d: storage unavailable, retrying", self.config.name, self.partition)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
            finally:
                unstored.pop(key, None)
            if unstored is self._unstored_segments:
                self._log.mark_stored(key)  # now its data may be evicted
            self._metrics.storage_write(time.perf_counter() - started)
            if self._replicas is not None:
                self._replicas.stored(*self._stored_floors())
            return result

        task = asyncio.ensure_future(attempt())
        if self._replicas is not None:  # nobody may be awaiting it
            task.add_done_callback(_log_failure)
        return task

    def _stored_floors(self) -> tuple[int, int]:
        """Every segment below the first offset, and every delete log below the
        sequence number, is on storage."""
        return (
            min(self._unstored_segments, default=self._log.next_offset),
            min(self._unstored_deletes, default=self._next_delete_seq),
        )

    def unstored(self) -> HeldWrites:
        """What is acknowledged or being written but not on storage yet: what a
        replica joining the in-sync set must be given first. With durability "storage"
        nothing acknowledged waits for storage, and replicas are standbys that hold
        nothing (and, told nothing of later deletes, must hold nothing)."""
        if self._replicas is None:
            return HeldWrites()
        return HeldWrites(dict(self._unstored_segments), dict(self._unstored_deletes))

    # ----------------------------------------------------------------- receives

    async def receive(self, max_messages: int, wait_s: float, visibility_s: float | None) -> pa.Table:
        """Up to ``max_messages`` deliveries; waits up to ``wait_s`` for the first one."""
        visibility = self.config.visibility_timeout_s if visibility_s is None else visibility_s
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        while True:
            await self._read_back()
            if self.fenced:  # replaced while this long poll waited: its successor serves now
                raise PartitionFenced(f"{self.config.name}/{self.partition}", self.epoch)
            delivery = self._log.receive(max_messages, self._clock(), visibility)
            remaining = give_up - loop.time()
            if delivery.num_rows or remaining <= 0:
                if delivery.num_rows:
                    redelivered = pc.sum(pc.greater(delivery.column("receive_count"), 1)).as_py() or 0
                    self._metrics.received(delivery.num_rows, redelivered)
                    self._report_state()
                return delivery
            await self._wait_for_change(remaining)

    async def _read_back(self) -> None:
        """Read evicted messages back from storage as the cursor nears them."""
        for chunk in self._log.to_load():
            table = await asyncio.to_thread(self._store.read_segment, chunk.segment)
            if table is None:
                raise StorageCorrupt(chunk.segment, "a segment holding live messages is unreadable")
            self._log.restore(chunk, table)

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
        seq = self._next_delete_seq
        self._next_delete_seq += 1
        try:
            self._unstored_deletes[seq] = offsets
            storing = self._write(self._store.write_deletes, offsets, seq, unstored=self._unstored_deletes, key=seq)
            if self._replicas is None or not await self._replicas.deletes(seq, offsets):
                await storing
        except BaseException as error:
            self.fenced |= isinstance(error, PartitionFenced)
            for ticket in tickets:
                self._log.abort_delete(ticket)
            self._notify()
            raise
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
        next_offset, seq = self._stored_floors()
        checkpoint = Checkpoint(seq=seq, epoch=self.epoch, next_offset=next_offset, segments=segments, deleted=deleted)
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
        return PartitionStats(
            self.partition,
            stats.visible,
            stats.in_flight,
            stats.stored_bytes,
            replicas_in_sync=self._replicator.in_sync() if self._replicator else 0,
            replicas_on_leader_node=self._replicator.on_leader_node() if self._replicator else 0,
            sent_total=self._sent_total,
            retiring=self.retiring,
        )

    def set_partition_count(self, count: int) -> None:
        """The queue now has ``count`` partitions: take this partition's share of max_messages."""
        self._log.quota = self.config.partition_quota(self.partition, count)

    def _report_state(self) -> None:
        # Counting in-flight messages scans the log: at most once a second.
        now = time.monotonic()
        if now - self._state_reported_at >= STATE_REPORT_INTERVAL_S:
            self._state_reported_at = now
            self.stats()


def _log_failure(task: asyncio.Future[Any]) -> None:
    # A background store that nobody awaits must not fail silently.
    if not task.cancelled() and task.exception() is not None:
        log.error("storing failed for good: %s", task.exception())
