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
from rayqueue.storage import PartitionStore

#: Body bytes one group commit writes at most (one segment object).
MAX_SEGMENT_BYTES = 64 * 1024 * 1024


class PartitionService:
    def __init__(
        self,
        config: QueueConfig,
        partition: int,
        store: PartitionStore,
        epoch: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.partition = partition
        self._store = store
        self._epoch = epoch
        self._clock = clock
        self._log = PartitionLog(
            partition,
            quota=config.partition_quota(partition),
            retention_s=config.retention_s,
            dedup_window_s=defaults.DEDUP_WINDOW_S,
        )
        self._sends: GroupCommit[pa.Table] = GroupCommit(
            self._flush_sends, weight=lambda rows: rows.nbytes, max_weight=MAX_SEGMENT_BYTES
        )
        self._deletes: GroupCommit[DeleteTicket] = GroupCommit(self._flush_deletes)
        self._next_delete_seq = 0
        self._pending_ids: dict[str, asyncio.Future[None]] = {}
        self._changed = asyncio.Event()
        self.objects_recovered = 0

    def recover(self) -> None:
        """Load everything this partition has on storage. Blocking; call before serving."""
        recovered = self._store.load()
        self._log.load(recovered.segments, recovered.deleted_offsets, recovered.next_offset, self._clock())
        self._next_delete_seq = recovered.next_delete_seq
        self.objects_recovered = recovered.objects_read

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
            self._log.reserve(self.config.name, rows.num_rows)
            stored = asyncio.ensure_future(self._sends.submit(rows))
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

    async def _flush_sends(self, groups: list[pa.Table]) -> None:
        rows = pa.concat_tables(groups)
        segment = self._log.stamp(rows, self._clock())
        try:
            await asyncio.to_thread(self._store.write_segment, segment, self._epoch)
        except BaseException:
            self._log.release(rows.num_rows)
            raise
        self._log.publish(segment)
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
        seq = self._next_delete_seq
        self._next_delete_seq += 1
        try:
            await asyncio.to_thread(self._store.write_deletes, offsets, seq, self._epoch)
        except BaseException:
            for ticket in tickets:
                self._log.abort_delete(ticket)
            self._notify()
            raise
        for ticket in tickets:
            self._log.commit_delete(ticket)

    def change_visibility(self, offset: int, token: int, receipt: str, timeout_s: float) -> None:
        self._log.change_visibility(offset, token, receipt, timeout_s, self._clock())
        self._notify()

    # -------------------------------------------------------------------- state

    def stats(self) -> PartitionStats:
        stats = self._log.stats(self._clock())
        return PartitionStats(self.partition, stats.visible, stats.in_flight, stats.stored_bytes)

