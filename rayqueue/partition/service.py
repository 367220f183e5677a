"""A partition at work: its log, its storage, group commit and long polling.

``PartitionService`` is what a partition actor hosts. It runs on one asyncio
event loop and knows nothing of Ray, so it runs in unit tests and in the
deterministic simulation as it is, and one actor process can host many.

The protocol, each rule kept by a piece of its own:

- Persist, then publish: a send becomes receivable only once it is as durable as
  the queue's ``durability`` promises (``rayqueue.partition.durability``); a delete takes
  effect only then.
- One ordered writer per kind of object (``rayqueue.partition.writer.OrderedWriter``): what
  an epoch stored is always a prefix of what it wrote.
- Floors only pass what is settled (``rayqueue.partition.writer.Settlement``): stored *and*
  in the log. Checkpoints and replica releases use those floors only.
- Only the leader serves (``rayqueue.partition.leadership.Leadership``): whatever is answered
  from memory waits for a look at storage that began after the call arrived.
- A fenced leader (replaced, or unable to store what it acknowledged) serves and
  acknowledges nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayqueue import defaults
from rayqueue.config import QueueConfig
from rayqueue.errors import (
    InvalidArgument,
    MessageTooLarge,
    PartitionFenced,
    PartitionRetired,
    RayQueueError,
    StorageCorrupt,
    shown,
)
from rayqueue.message import PartitionStats
from rayqueue.partition.durability import Durability, ReplicasFirst, StorageFirst
from rayqueue.partition.group_commit import GroupCommit
from rayqueue.partition.leadership import Leadership
from rayqueue.partition.log import DeleteTicket, PartitionLog
from rayqueue.partition.metrics import NoMetrics, PartitionMetrics
from rayqueue.partition.replication import HeldWrites, ReplicaSet
from rayqueue.partition.writer import OrderedWriter, RunBlocking, Settlement
from rayqueue.schemas import SEND_SCHEMA, body_sizes
from rayqueue.storage import PartitionStore, RecoveredPartition
from rayqueue.storage.partition_store import Checkpoint

log = logging.getLogger(__name__)


class PartitionService:
    def __init__(
        self,
        config: QueueConfig,
        partition: int,
        store: PartitionStore,
        clock: Callable[[], float] = time.time,
        checkpoint_every: int = defaults.CHECKPOINT_EVERY,
        metrics: PartitionMetrics | None = None,
        replicas: ReplicaSet | None = None,
        run_blocking: RunBlocking = asyncio.to_thread,
    ) -> None:
        self.config = config
        self.partition = partition
        self._store = store
        self._clock = clock
        self._checkpoint_every = checkpoint_every
        self._metrics = metrics or NoMetrics()
        self._state_reported_at = 0.0
        self._replicas = replicas
        self._run_blocking = run_blocking
        acknowledging = config.durability == "replicas" and replicas is not None
        self._durability: Durability = (
            ReplicasFirst(replicas, lambda: len(self._segment_writer) + len(self._delete_writer))
            if acknowledging and replicas
            else StorageFirst()
        )
        self._log = PartitionLog(
            partition,
            quota=config.partition_quota(partition),
            retention_s=config.retention_s,
            dedup_window_s=defaults.DEDUP_WINDOW_S,
            memory_budget=config.partition_memory_bytes,
        )
        # Items are (rows, whether their ids are explicit).
        self._sends: GroupCommit[tuple[pa.Table, bool]] = GroupCommit(
            self._flush_sends, weight=lambda item: item[0].nbytes, max_weight=defaults.MAX_SEGMENT_BYTES
        )
        self._deletes: GroupCommit[DeleteTicket] = GroupCommit(self._flush_deletes)
        self._next_delete_seq = 0
        self._segments_settled = Settlement()
        self._deletes_settled = Settlement()
        unstored_acks = self._durability.acknowledges_unstored
        self._segment_writer = OrderedWriter(
            self._segments_settled,
            run_blocking,
            retry=unstored_acks,
            fatal=True,
            on_stored=self._segment_stored,
            on_fatal=self._cannot_store,
            on_write_seconds=self._metrics.storage_write,
        )
        self._delete_writer = OrderedWriter(
            self._deletes_settled,
            run_blocking,
            retry=unstored_acks,
            fatal=unstored_acks,
            on_stored=lambda seq: self._settled(),
            on_fatal=self._cannot_store,
            on_write_seconds=self._metrics.storage_write,
        )
        if replicas is not None:
            replicas.stored = self._all_stored
        self._leadership = Leadership(lambda: self._run_blocking(self._store.check_leader), self._fence)
        self._since_checkpoint = 0
        #: The delete floor of this leader's last checkpoint (-1: none yet).
        self._checkpointed_seq = -1
        self._checkpointing: asyncio.Task[None] | None = None
        self._pending_ids: dict[str, asyncio.Future[None]] = {}
        self._sent_total = 0
        #: Scaling in: refuse sends, keep serving receives and deletes.
        self.retiring = False
        #: Replaced by a newer leader, or unable to store what it acknowledged: serve nothing more.
        self.fenced = False
        #: Told (once) when this leader fences itself, so its host can stop it.
        self.on_fenced: Callable[[], None] = lambda: None
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
        # Never reuse an offset a stored delete names: a leader whose writes were lost with
        # every replica holding them may have had them deleted, and the delete would
        # take a new message at that offset with it.
        deleted = recovered.deleted_offsets
        self._log.finish_load(max(recovered.next_offset, int(deleted.max()) + 1 if len(deleted) else 0), now)
        self._log.epoch = self.epoch
        if self._replicas is not None:
            self._replicas.epoch = self.epoch
        self._next_delete_seq = recovered.next_delete_seq
        self.objects_recovered = self._store.objects_read
        # A failover or a restart is rare and decides what a partition serves: worth a line
        # in its log (a new partition's first takeover is not).
        log.log(
            logging.WARNING if self.epoch > 1 else logging.INFO,
            "%s partition %d: took over under epoch %d: %d segments up to offset %d, %d deleted offsets, "
            "held %d segments and %d delete logs",
            self.config.name,
            self.partition,
            self.epoch,
            len(recovered.segments),
            self._log.next_offset,
            len(deleted),
            len(held.segments) if held else 0,
            len(held.deletes) if held else 0,
        )

    def _store_held(self, recovered: RecoveredPartition, held: HeldWrites) -> None:
        # Under this leader's epoch. A copy the old leader stored before the takeover was
        # recovered already; one it stores later lands past the fence and is ignored.
        # One below the checkpoint's floor that storage no longer has was stored, then
        # emptied by deletes and removed: storing it again would bring deleted messages back.
        stored = recovered.segments.first_offsets()
        for first, batch in sorted(held.segments.items()):
            if first in stored or first < recovered.checkpointed_below:
                continue
            if first < recovered.next_offset:  # overlaps what storage has: never two copies of an offset
                raise StorageCorrupt(self._store.segment_name(first), "a held segment overlaps stored ones")
            name = self._store.write_segment(batch)
            recovered.segments.add(name, pa.Table.from_batches([batch]))
            recovered.next_offset = first + batch.num_rows
        if held.deletes:
            offsets = np.unique(np.concatenate(list(held.deletes.values())))
            self._store.write_deletes(offsets, recovered.next_delete_seq)
            recovered.next_delete_seq += 1
            recovered.deleted_offsets = np.union1d(recovered.deleted_offsets, offsets)

    @property
    def epoch(self) -> int:
        return self._store.epoch

    def _fence(self) -> None:
        if not self.fenced:
            log.warning(
                "%s partition %d (epoch %d): fenced; serving nothing more", self.config.name, self.partition, self.epoch
            )
            self.fenced = True
            self._notify()  # long polls wake up and refuse
            self.on_fenced()

    def _fenced_by(self, error: BaseException) -> NoReturn:
        """Re-raise a failed write's error. One that is not rayqueue's own (a backend's
        raw error) becomes PartitionFenced if this leader has stopped over it: the
        caller's handle then finds its successor, which holds or reads what landed."""
        if isinstance(error, PartitionFenced):
            self._fence()
        if self.fenced and isinstance(error, Exception) and not isinstance(error, RayQueueError):
            raise PartitionFenced(f"{self.config.name}/{self.partition}", self.epoch) from error
        raise error

    def _cannot_store(self, error: BaseException) -> None:
        """A write whose outcome matters failed (see ``OrderedWriter``): stop, so that a
        replica holding it, or a successor reading what landed, takes over."""
        self._fence()

    def _refuse_if_fenced(self) -> None:
        if self.fenced:
            raise PartitionFenced(f"{self.config.name}/{self.partition}", self.epoch)

    # -------------------------------------------------------------------- sends

    async def send(self, rows: pa.Table, dedup: bool) -> None:
        """Store ``rows`` (SEND_SCHEMA); return once they are on storage.

        With ``dedup``, rows whose id was sent in the dedup window are skipped
        (and the call waits for them if they are still being stored).
        """
        self._refuse_if_fenced()
        if self.retiring:
            raise PartitionRetired(self.config.name, self.partition)
        self._check_rows(rows)
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

    def _check_rows(self, rows: object) -> None:
        """Refuse rows that are not SEND_SCHEMA exactly, or are malformed Arrow (text that
        is not UTF-8, offsets out of range, a null id or body), whoever sent them.

        Checked here, before the rows join a group commit: there they would be stored
        with other producers' batches, whose whole flush would fail with them (a schema
        that does not concatenate), or be stored and break every receive that meets them
        (invalid UTF-8). Full validation reads offsets and the string columns (ids, keys,
        attributes), not binary bodies: measured, 2 us for one row, 0.15 ms for 10,000
        (0.7 ms with a key and three attributes on each), against a storage write."""
        if not isinstance(rows, pa.Table):
            raise InvalidArgument(f"{self.config.name} partition {self.partition}: a send takes an Arrow table")
        if not rows.schema.equals(SEND_SCHEMA):
            raise InvalidArgument(
                f"{self.config.name} partition {self.partition}: the rows sent do not have the send schema: "
                f"{schema_difference(rows.schema)}"
            )
        try:
            rows.validate(full=True)
        except pa.ArrowInvalid as error:
            raise InvalidArgument(
                f"{self.config.name} partition {self.partition}: the rows sent are malformed: {shown(str(error))}"
            ) from None
        if rows.column("id").null_count or rows.column("body").null_count:
            raise InvalidArgument(f"{self.config.name} partition {self.partition}: a row sent has a null id or body")

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
        self._refuse_if_fenced()
        count = sum(rows.num_rows for rows, _ in items)
        segment = self._log.stamp(pa.concat_tables([rows for rows, _ in items]), self._clock())
        first = segment.column(0)[0].as_py()
        self._segments_settled.open(first)
        try:
            stored = self._segment_writer.submit(first, self._store.write_segment, segment, payload=segment)
            await self._durability.segment(segment, stored)
            self._refuse_if_fenced()  # a fenced leader acknowledges nothing
        except BaseException as error:
            self._log.release(count)
            self._segments_settled.done(first, "applied")
            self._fenced_by(error)
        on_storage = stored.done() and not stored.cancelled() and stored.exception() is None
        name = self._store.segment_name(first)
        self._log.publish(segment, name, explicit_ids=any(dedup for _, dedup in items), stored=on_storage)
        self._segments_settled.done(first, "applied")
        self._settled()
        self._sent_total += count
        self._metrics.sent(count, int(body_sizes(segment.column("body")).sum()))
        self._report_state()
        self._notify()

    def _segment_stored(self, first: int) -> None:
        self._log.mark_stored(first)  # now its data may be evicted
        self._settled()

    def _settled(self) -> None:
        """Floors moved: replicas may let go of what is settled."""
        self._durability.settled(*self._floors())

    def _floors(self) -> tuple[int, int]:
        """Every segment below the first offset, and every delete log below the sequence
        number, is settled: on storage and in the log (or failed, unacknowledged)."""
        return (
            self._segments_settled.floor(self._log.next_offset),
            self._deletes_settled.floor(self._next_delete_seq),
        )

    async def _all_stored(self) -> None:
        """Return once everything written so far is stored; PartitionFenced if a write
        failed for good instead (then this leader stops, and only its replicas hold it)."""
        await asyncio.gather(self._segment_writer.drained(), self._delete_writer.drained())
        if self._segment_writer.failed or self._delete_writer.failed:
            raise PartitionFenced(f"{self.config.name}/{self.partition}", self.epoch)

    def unstored(self) -> HeldWrites:
        """What is acknowledged or being written but not on storage yet: what a replica
        joining the in-sync set must be given first (nothing with durability "storage",
        where replicas are standbys that hold nothing)."""
        if not self._durability.acknowledges_unstored:
            return HeldWrites()
        return HeldWrites(self._segment_writer.pending(), self._delete_writer.pending())

    # ----------------------------------------------------------------- receives

    async def receive(self, max_messages: int, wait_s: float, visibility_s: float | None) -> pa.Table:
        """Up to ``max_messages`` deliveries; waits up to ``wait_s`` for the first one.

        Messages are taken, then leadership is confirmed before they are handed out:
        a replaced leader hands out nothing (and gives back what it took)."""
        visibility = self.config.visibility_timeout_s if visibility_s is None else visibility_s
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        while True:
            self._refuse_if_fenced()  # replaced while this long poll waited: its successor serves now
            await self._read_back()
            delivery = self._log.receive(max_messages, self._clock(), visibility)
            remaining = give_up - loop.time()
            if delivery.num_rows:
                await self._confirm(delivery)
                redelivered = pc.sum(pc.greater(delivery.column("receive_count"), 1)).as_py() or 0
                self._metrics.received(delivery.num_rows, redelivered)
                self._report_state()
                return delivery
            if remaining <= 0:
                return delivery
            await self._wait_for_change(remaining)

    async def _confirm(self, taken: pa.Table | None = None) -> None:
        """Return once leadership is confirmed (read-index); else give back what was taken and raise."""
        try:
            await self._leadership.confirm()
        except BaseException:
            if taken is not None:
                self._log.give_back(taken)
                self._notify()
            raise

    async def _read_back(self) -> None:
        """Read evicted messages back from storage as the cursor nears them."""
        for chunk in self._log.to_load():
            table = await self._run_blocking(self._store.read_segment, chunk.segment)
            if table is None:
                raise StorageCorrupt(chunk.segment, "a segment holding live messages is unreadable")
            self._log.restore(chunk, table)

    async def wait_visible(self, wait_s: float) -> bool:
        """Whether a message is visible, waiting up to ``wait_s`` for one. Takes nothing
        (a receive that follows confirms leadership)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        while not self._log.has_visible(self._clock()):
            self._refuse_if_fenced()
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
        except TimeoutError:
            pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def change_visibility(self, offset: int, token: int, receipt: str, timeout_s: float) -> None:
        """Make one in-flight message visible again after ``timeout_s`` (once leadership is confirmed)."""
        self._refuse_if_fenced()
        await self._confirm()
        self._log.change_visibility(offset, token, receipt, timeout_s, self._clock())
        self._notify()

    # ------------------------------------------------------------------ deletes

    async def delete(self, offsets: np.ndarray, tokens: np.ndarray, receipts: list[str]) -> None:
        """Delete by receipt; return once the delete is durable. All or nothing.

        A delete with nothing to write (messages already deleted) is answered only once
        leadership is confirmed: a replaced leader must not acknowledge it."""
        self._refuse_if_fenced()
        ticket = self._log.prepare_delete(offsets, tokens, receipts)
        if len(ticket.offsets):
            await self._deletes.submit(ticket)
        else:
            await self._confirm()

    async def _flush_deletes(self, tickets: list[DeleteTicket]) -> None:
        offsets = np.concatenate([ticket.offsets for ticket in tickets])
        seq = self._next_delete_seq
        self._next_delete_seq += 1
        self._deletes_settled.open(seq)
        try:
            self._refuse_if_fenced()
            stored = self._delete_writer.submit(seq, self._store.write_deletes, offsets, seq, payload=offsets)
            await self._durability.deletes(seq, offsets, stored)
            self._refuse_if_fenced()
        except BaseException as error:
            self._deletes_settled.done(seq, "applied")
            for ticket in tickets:
                self._log.abort_delete(ticket)
            self._notify()
            self._fenced_by(error)
        for ticket in tickets:
            self._log.commit_delete(ticket)
        self._deletes_settled.done(seq, "applied")
        self._settled()
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
        retried at the next opportunity: the partition keeps serving either way.

        Invariant: its floors are the settlement floors, taken in the same step as the
        log's snapshot (no await between), so every segment below its offset floor is
        in the snapshot or holds nothing live, and every delete log below its sequence
        floor is in the snapshot's deleted ranges."""
        next_offset, seq = self._floors()
        if self.fenced or seq <= self._checkpointed_seq:
            # Nothing new to fold: a second checkpoint under the same name (its delete
            # floor and epoch) would be refused, being put-once. The next one removes
            # what was emptied meanwhile.
            return
        segments, deleted = self._log.live_segments(self._clock(), next_offset)
        checkpoint = Checkpoint(seq=seq, epoch=self.epoch, next_offset=next_offset, segments=segments, deleted=deleted)
        since, dropped = self._since_checkpoint, self._log.dropped_segments
        try:
            await self._run_blocking(self._store.write_checkpoint, checkpoint)
        except PartitionFenced:
            self._fence()
            return
        except Exception:
            log.exception("checkpoint of %s partition %d failed; will retry", self.config.name, self.partition)
            return
        self._since_checkpoint -= since
        self._log.dropped_segments -= dropped
        self._checkpointed_seq = seq

    # -------------------------------------------------------------------- state

    def stats(self) -> PartitionStats:
        stats = self._log.stats(self._clock())
        self._metrics.state(stats.visible, stats.in_flight, stats.stored_bytes)
        return PartitionStats(
            self.partition,
            stats.visible,
            stats.in_flight,
            stats.stored_bytes,
            replicas_in_sync=self._replicas.in_sync() if self._replicas else 0,
            replicas_on_leader_node=self._replicas.on_leader_node() if self._replicas else 0,
            sent_total=self._sent_total,
            retiring=self.retiring,
        )

    def set_partition_count(self, count: int) -> None:
        """The queue now has ``count`` partitions: take this partition's share of max_messages."""
        self._log.quota = self.config.partition_quota(self.partition, count)

    def _report_state(self) -> None:
        # Counting in-flight messages scans the log: at most once a second.
        now = time.monotonic()
        if now - self._state_reported_at >= defaults.STATE_REPORT_INTERVAL_S:
            self._state_reported_at = now
            self.stats()


def schema_difference(schema: pa.Schema) -> str:
    """How ``schema`` differs from SEND_SCHEMA, in words."""

    def typed(field: pa.Field) -> str:
        return f"{field.type}{'' if field.nullable else ' not null'}"

    wanted = {field.name: field for field in SEND_SCHEMA}
    parts = []
    for field in schema:
        if field.name not in wanted:
            parts.append(f"an extra column {shown(repr(field.name))}")
        elif not field.equals(wanted[field.name]):
            parts.append(f"column {field.name!r} is {typed(field)}, not {typed(wanted[field.name])}")
    parts += [f"no column {name!r}" for name in wanted if name not in schema.names]
    return "; ".join(parts) or f"columns in another order ({', '.join(map(shown, schema.names))})"
