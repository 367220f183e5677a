"""One partition's messages and their delivery state: pure logic, no Ray, no I/O.

Messages live in chunks, one per stored segment: the Arrow rows as written,
plus NumPy arrays of per-message state (visibility deadline, receive count,
delivery token, deleted flag), so that receiving and deleting a batch costs a
few vector operations rather than a Python loop over messages.

Every method takes ``now`` (seconds since the epoch) instead of reading a clock,
so tests drive time by hand. Offsets grow by one per message and are never
reused; a chunk's offsets are consecutive.

Delivery order: messages never delivered yet are handed out in offset order
from ``cursor``; messages whose visibility timeout ran out come back first,
since they are older.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from rayqueue.errors import InvalidReceipt, QueueFull
from rayqueue.schemas import DELIVERY_SCHEMA, SEGMENT_SCHEMA, body_sizes

_MICROS = 1_000_000


@dataclass(eq=False)
class Chunk:
    """The messages of one segment and their delivery state.

    ``batch`` (the message data) may be evicted to stay within the partition's
    memory budget, and read back from the segment later; the state stays.
    """

    batch: pa.RecordBatch | None
    #: Name of the stored segment these rows came from.
    segment: str
    first: int
    rows: int
    sent_at: np.ndarray  # float64 seconds, non-decreasing
    sizes: np.ndarray  # int64 body bytes
    visible_at: np.ndarray = field(init=False)  # float64; inf while a delete is being stored
    receive_count: np.ndarray = field(init=False)  # int32
    token: np.ndarray = field(init=False)  # int64; 0 = never delivered
    deleted: np.ndarray = field(init=False)  # bool
    live: int = field(init=False)
    #: Earliest visibility deadline among delivered rows (a lower bound; may be stale-low).
    deadline: float = math.inf
    #: Rows at the head already dropped for age.
    expired: int = 0
    #: Until when its segment must stay on storage, emptied or not, because it
    #: holds explicit message ids that a restarted partition must still recognise.
    dedup_until: float = 0.0

    #: Whether the segment is on storage (else its data may not be evicted).
    stored: bool = True

    def __post_init__(self) -> None:
        rows = self.rows
        self.visible_at = np.zeros(rows, np.float64)
        self.receive_count = np.zeros(rows, np.int32)
        self.token = np.zeros(rows, np.int64)
        self.deleted = np.zeros(rows, np.bool_)
        self.live = rows

    @property
    def end(self) -> int:
        return self.first + self.rows

    @property
    def resident_bytes(self) -> int:
        return self.batch.nbytes if self.batch is not None else 0

    @classmethod
    def from_segment(cls, batch: pa.RecordBatch, segment: str) -> Chunk:
        first = batch.column(0)[0].as_py()
        sent = batch.column("sent_at").view(pa.int64()).to_numpy() / _MICROS
        sizes = body_sizes(batch.column("body"))
        return cls(batch=batch, segment=segment, first=first, rows=batch.num_rows, sent_at=sent, sizes=sizes)


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


@dataclass
class DeleteTicket:
    """Deletes accepted but not yet stored: commit after the delete log is durable."""

    offsets: np.ndarray
    rows: list[tuple[Chunk, np.ndarray, np.ndarray]]  # chunk, row indexes, prior visible_at


@dataclass(frozen=True)
class LogStats:
    visible: int
    in_flight: int
    stored_bytes: int


class PartitionLog:
    """The state of one partition. Not thread-safe: one event loop drives it."""

    def __init__(
        self,
        partition: int,
        quota: int,
        retention_s: float,
        dedup_window_s: float,
        seed: int | None = None,
        memory_budget: int = 1 << 62,
    ) -> None:
        self.partition = partition
        self.quota = quota
        self.retention_s = retention_s
        self.dedup_window_s = dedup_window_s
        #: Bytes of message data the log keeps in memory; the rest waits on storage.
        self.memory_budget = memory_budget
        self._resident = 0
        self._evicted = 0  # chunks whose data waits on storage
        self.next_offset = 0
        self._chunks: list[Chunk] = []
        self._firsts: list[int] = []
        self._cursor = 0
        self._live = 0
        self._fresh = 0  # messages past the cursor: never delivered
        self._reserved = 0
        self._bytes = 0
        self._last_sent_at = 0.0
        self._next_deadline = math.inf
        self._dedup: dict[str, float] = {}
        self._dedup_order: deque[tuple[float, str]] = deque()
        self._rng = np.random.default_rng(seed)
        #: Chunks dropped because every message in them is gone (their segments are garbage).
        self.dropped_segments = 0
        #: Emptied segments kept for the dedup window: (name, first, end, until), oldest first.
        self._retained: deque[tuple[str, int, int, float]] = deque()
        #: Emptied segments a checkpoint's floor has not passed yet: (name, first, end).
        self._emptied: list[tuple[str, int, int]] = []
        #: The epoch of the leader this log serves under (stamped on every delivery).
        self.epoch = 0

    # ----------------------------------------------------------------- recovery

    def load_segment(self, name: str, table: pa.Table, deleted: np.ndarray, now: float) -> None:
        """Recovery, one stored segment at a time (in offset order), so that memory stays
        within budget however large the backlog: every message not deleted becomes
        visible again. Call ``finish_load`` after the last one."""
        for batch in table.combine_chunks().to_batches():
            if batch.num_rows == 0:
                continue
            chunk = Chunk.from_segment(batch, name)
            rows = deleted[(deleted >= chunk.first) & (deleted < chunk.end)] - chunk.first
            chunk.deleted[rows] = True
            chunk.live = int(chunk.rows - chunk.deleted.sum())
            self._last_sent_at = max(self._last_sent_at, float(chunk.sent_at[-1]))
            self._remember(batch.column("id").to_pylist(), float(chunk.sent_at[-1]), now)
            self.next_offset = max(self.next_offset, chunk.end)
            # A recovered segment may hold ids a producer will send again (a retry whose
            # first attempt landed): it stays on storage for the dedup window, emptied or
            # not, so that a later leader still recognises them.
            if chunk.sent_at[-1] + self.dedup_window_s > now:
                chunk.dedup_until = float(chunk.sent_at[-1]) + self.dedup_window_s
            if chunk.live:
                self._add_chunk(chunk)
                self._fresh += chunk.live
                self._evict_over_budget()
            elif chunk.dedup_until:
                self._retain(chunk)

    def finish_load(self, next_offset: int, now: float) -> None:
        self.next_offset = max(self.next_offset, next_offset)
        self._cursor = self._firsts[0] if self._firsts else self.next_offset
        self._expire(now)

    def load(self, segments: list[tuple[str, pa.Table]], deleted: np.ndarray, next_offset: int, now: float) -> None:
        """Rebuild from stored ``(name, segment)`` pairs (``load_segment`` for each, then
        ``finish_load``)."""
        for name, table in segments:
            self.load_segment(name, table, deleted, now)
        self.finish_load(next_offset, now)

    # ------------------------------------------------------------ memory budget

    def _evict_over_budget(self) -> None:
        """Drop the data of the newest never-delivered, stored chunks until the
        resident data fits the budget: they are read back as the cursor nears them."""
        for chunk in reversed(self._chunks):
            if self._resident <= self.memory_budget:
                return
            if chunk.first < self._cursor:
                return  # delivered rows may be redelivered: their data stays
            if chunk.batch is not None and chunk.stored:
                self._resident -= chunk.resident_bytes
                chunk.batch = None
                self._evicted += 1

    def to_load(self) -> list[Chunk]:
        """Evicted chunks to read back now: the next one, if the cursor has reached it
        (whatever the budget: receives must progress), and more in order while they
        fit the budget."""
        if not self._evicted:
            return []
        wanted, budget, reached = [], self.memory_budget - self._resident, True
        for chunk in self._chunks[max(bisect.bisect_right(self._firsts, self._cursor) - 1, 0) :]:
            if chunk.batch is not None:
                reached = reached and chunk.end <= self._cursor  # else it has rows to deliver first
                continue
            size = int(chunk.sizes.sum())
            if not reached and size > budget:
                break
            wanted.append(chunk)
            budget -= size
            reached = False
        return wanted

    def restore(self, chunk: Chunk, table: pa.Table) -> None:
        """Give an evicted chunk its data back (read from its segment)."""
        if chunk.batch is None:
            batch = table.combine_chunks().to_batches()[0]
            chunk.batch = batch.slice(chunk.first - batch.column(0)[0].as_py(), chunk.rows)
            self._resident += chunk.resident_bytes
            self._evicted -= 1

    def mark_stored(self, first_offset: int) -> None:
        """A segment acknowledged before it was stored is now on storage."""
        found = self._locate(first_offset)
        if found is not None:
            found[0].stored = True
            self._evict_over_budget()

    @property
    def resident_bytes(self) -> int:
        return self._resident

    def _add_chunk(self, chunk: Chunk) -> None:
        self._resident += chunk.resident_bytes
        self._chunks.append(chunk)
        self._firsts.append(chunk.first)
        self._live += chunk.live
        self._bytes += int(chunk.sizes[~chunk.deleted].sum())

    # -------------------------------------------------------------------- sends

    def reserve(self, queue: str, count: int, now: float) -> None:
        """Hold room for ``count`` messages about to be stored, or raise QueueFull."""
        self._expire(now)  # messages past retention leave room
        if self._live + self._reserved + count > self.quota:
            raise QueueFull(queue, self.quota, self._live + self._reserved, count)
        self._reserved += count

    def release(self, count: int) -> None:
        """Give back a reservation whose messages were not stored."""
        self._reserved -= count

    def seen_ids(self, ids: list[str], now: float) -> list[bool]:
        """Which explicit message ids were sent within the dedup window."""
        self._forget_old_ids(now)
        return [message_id in self._dedup for message_id in ids]

    def remember_ids(self, ids: list[str], now: float) -> None:
        self._remember(ids, now, now)

    def _remember(self, ids: list[str], sent_at: float, now: float) -> None:
        expires = sent_at + self.dedup_window_s
        if expires <= now:
            return
        for message_id in ids:
            self._dedup[message_id] = expires
            self._dedup_order.append((expires, message_id))

    def _forget_old_ids(self, now: float) -> None:
        while self._dedup_order and self._dedup_order[0][0] <= now:
            expires, message_id = self._dedup_order.popleft()
            if self._dedup.get(message_id) == expires:
                del self._dedup[message_id]

    def stamp(self, rows: pa.Table, now: float) -> pa.RecordBatch:
        """Give the rows their offsets and send time: the segment to store.

        Offsets are taken even if storing fails; a gap in offsets is harmless.
        """
        count = rows.num_rows
        first = self.next_offset
        self.next_offset += count
        # Send times never go backwards within a partition, so age-based expiry
        # can drop messages from the head.
        self._last_sent_at = max(self._last_sent_at, now)
        micros = int(self._last_sent_at * _MICROS)
        columns = [pa.array(np.arange(first, first + count, dtype=np.int64))]
        columns += [_one_chunk(rows.column(name)) for name in ("id", "body", "key", "attributes")]
        columns.append(pa.array(np.full(count, micros, np.int64), SEGMENT_SCHEMA.field("sent_at").type))
        return pa.RecordBatch.from_arrays(columns, schema=SEGMENT_SCHEMA)

    def publish(self, segment: pa.RecordBatch, name: str, explicit_ids: bool = False, stored: bool = True) -> None:
        """Make a segment's messages receivable; consumes its reservation.

        ``explicit_ids``: the segment holds ids given by producers, which the
        dedup window must remember even across a restart. ``stored``: it is on
        storage already (else ``mark_stored`` says when).
        """
        self._reserved -= segment.num_rows
        self._fresh += segment.num_rows
        chunk = Chunk.from_segment(segment, name)
        chunk.stored = stored
        if explicit_ids:
            chunk.dedup_until = float(chunk.sent_at[-1]) + self.dedup_window_s
        self._add_chunk(chunk)
        self._evict_over_budget()

    # ----------------------------------------------------------------- receives

    def receive(self, max_messages: int, now: float, visibility_s: float) -> pa.Table:
        """Hand out up to ``max_messages`` visible messages and hide them until ``now + visibility_s``."""
        self._expire(now)
        deadline = now + visibility_s
        pieces: list[tuple[Chunk, np.ndarray]] = []
        wanted = max_messages
        if self._next_deadline <= now:
            wanted -= self._take_redeliveries(wanted, now, pieces)
        wanted -= self._take_fresh(wanted, pieces)
        if not pieces:
            return DELIVERY_SCHEMA.empty_table()
        batches = []
        for chunk, rows in pieces:
            chunk.visible_at[rows] = deadline
            chunk.receive_count[rows] += 1
            chunk.token[rows] = self._rng.integers(1, 2**62, size=len(rows))
            chunk.deadline = min(chunk.deadline, deadline)
            batches.append(_delivery(chunk, rows, self.epoch))
        self._next_deadline = min(self._next_deadline, deadline)
        return pa.Table.from_batches(batches, schema=DELIVERY_SCHEMA)

    def give_back(self, delivery: pa.Table) -> None:
        """Undo a receive whose messages were never handed out: they are visible again
        at once, their receive count as it was."""
        offsets = delivery.column("offset").to_numpy()
        tokens = delivery.column("token").to_numpy()
        for offset, token in zip(offsets.tolist(), tokens.tolist()):
            found = self._locate(offset)
            if found is None:
                continue
            chunk, row = found
            if chunk.deleted[row] or chunk.token[row] != token:
                continue  # deleted or delivered again since
            chunk.visible_at[row] = 0.0
            chunk.receive_count[row] -= 1
            chunk.deadline = 0.0
            self._next_deadline = 0.0

    def _take_fresh(self, wanted: int, pieces: list[tuple[Chunk, np.ndarray]]) -> int:
        taken = 0
        index = max(bisect.bisect_right(self._firsts, self._cursor) - 1, 0)
        while taken < wanted and self._fresh and index < len(self._chunks):
            chunk = self._chunks[index]
            if chunk.batch is None:
                break  # evicted: the service reads it back before the next receive
            start = max(self._cursor - chunk.first, 0)
            # Rows past the cursor were never delivered; only a restart leaves deleted ones among them.
            rows = start + np.flatnonzero(~chunk.deleted[start:])[: wanted - taken]
            if len(rows):
                pieces.append((chunk, rows))
                taken += len(rows)
            reached_end = taken < wanted or not len(rows)
            self._cursor = chunk.end if reached_end else chunk.first + int(rows[-1]) + 1
            index += 1
        self._fresh -= taken
        return taken

    def _take_redeliveries(self, wanted: int, now: float, pieces: list[tuple[Chunk, np.ndarray]]) -> int:
        taken = 0
        for chunk, due in self._due_rows(now):
            rows = due[: wanted - taken]
            if len(rows):
                pieces.append((chunk, rows))
                taken += len(rows)
            if taken >= wanted:
                break
        return taken

    def _due_rows(self, now: float) -> list[tuple[Chunk, np.ndarray]]:
        """Delivered rows whose visibility timeout has run out, chunk by chunk.

        Refreshes the deadlines of the chunks it scans (and the partition's), so
        that a stale, too-early deadline costs one scan, not a busy loop.
        """
        found = []
        for chunk in self._chunks:
            if chunk.first >= self._cursor:
                break
            if chunk.deadline > now:
                continue
            delivered = self._delivered_rows(chunk)
            alive = ~chunk.deleted[:delivered]
            visible_at = chunk.visible_at[:delivered]
            due = np.flatnonzero(alive & (visible_at <= now))
            later = visible_at[alive & (visible_at > now)]
            # Rows handed out from ``due`` get a new deadline, which receive() records.
            chunk.deadline = now if len(due) else (float(later.min()) if len(later) else math.inf)
            found.append((chunk, due))
        self._next_deadline = min((chunk.deadline for chunk in self._chunks), default=math.inf)
        return found

    def _delivered_rows(self, chunk: Chunk) -> int:
        return min(max(self._cursor - chunk.first, 0), chunk.rows)

    # ------------------------------------------------------------------ deletes

    def prepare_delete(
        self, offsets: np.ndarray, tokens: np.ndarray, receipts: Sequence[str] | pa.Array
    ) -> DeleteTicket:
        """Check every receipt and hide the messages; raise InvalidReceipt and change nothing if any is bad.

        A receipt of a message already deleted is accepted: deleting twice is harmless.
        """
        rows_by_chunk: list[tuple[Chunk, np.ndarray, np.ndarray]] = []
        # A receipt repeated in one batch must delete its message once, not twice;
        # two different receipts of one message are both checked.
        order = np.lexsort((tokens, offsets))
        offsets, tokens = offsets[order], tokens[order]
        first = np.ones(len(order), np.bool_)
        first[1:] = (offsets[1:] != offsets[:-1]) | (tokens[1:] != tokens[:-1])
        offsets, tokens, positions = offsets[first], tokens[first], order[first]
        if np.any(offsets >= self.next_offset):
            bad = int(np.flatnonzero(offsets >= self.next_offset)[0])
            raise InvalidReceipt(_text(receipts, positions[bad]), "no such message was ever sent")
        firsts = np.asarray(self._firsts, np.int64)
        where = np.searchsorted(firsts, offsets, side="right") - 1
        for index in np.unique(where):
            if index < 0:
                continue  # before every chunk we hold: long deleted
            chunk = self._chunks[index]
            picked = np.flatnonzero(where == index)
            rows = offsets[picked] - chunk.first
            inside = rows < chunk.rows  # else in a gap left by a failed write
            picked, rows = picked[inside], rows[inside]
            stale = ~chunk.deleted[rows] & (chunk.token[rows] != tokens[picked])
            if np.any(stale):
                bad = int(picked[np.flatnonzero(stale)[0]])
                raise InvalidReceipt(_text(receipts, positions[bad]), "not the latest receipt of this message")
            rows = rows[~chunk.deleted[rows]]
            if len(rows):
                # A row hidden by another delete still in flight has no deadline of its own
                # (inf): should both attempts fail, it must come back, so it is due at once.
                prior = chunk.visible_at[rows]
                rows_by_chunk.append((chunk, rows, np.where(np.isinf(prior), 0.0, prior)))
        for chunk, rows, _prior in rows_by_chunk:
            chunk.visible_at[rows] = math.inf
        to_store = [chunk.first + rows for chunk, rows, _ in rows_by_chunk]
        stored = np.concatenate(to_store) if to_store else np.empty(0, np.int64)
        return DeleteTicket(offsets=stored, rows=rows_by_chunk)

    def commit_delete(self, ticket: DeleteTicket) -> None:
        """The delete log is durable: the messages are gone for good."""
        for chunk, rows, _prior in ticket.rows:
            rows = rows[~chunk.deleted[rows]]  # a concurrent delete may have committed them
            chunk.deleted[rows] = True
            chunk.live -= len(rows)
            self._live -= len(rows)
            self._bytes -= int(chunk.sizes[rows].sum())
            if len(rows) and chunk.live == 0:
                self._drop(chunk)

    def abort_delete(self, ticket: DeleteTicket) -> None:
        """Storing the delete log failed: the messages are as they were."""
        for chunk, rows, prior in ticket.rows:
            pending = ~chunk.deleted[rows]
            chunk.visible_at[rows[pending]] = prior[pending]
            if pending.any():
                # Their timeouts may have run out meanwhile: let receives look again.
                chunk.deadline = min(chunk.deadline, float(prior[pending].min()))
                self._next_deadline = min(self._next_deadline, chunk.deadline)

    def _drop(self, chunk: Chunk) -> None:
        index = self._chunks.index(chunk)
        self._resident -= chunk.resident_bytes
        self._evicted -= chunk.batch is None
        del self._chunks[index]
        del self._firsts[index]
        self._cursor = max(self._cursor, chunk.end)
        self.dropped_segments += 1
        self._emptied.append((chunk.segment, chunk.first, chunk.end))
        if chunk.dedup_until:
            self._retain(chunk)

    def _retain(self, chunk: Chunk) -> None:
        self._retained.append((chunk.segment, chunk.first, chunk.end, chunk.dedup_until))

    def live_segments(self, now: float, floor: int) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
        """For a checkpoint whose offset floor is ``floor``: the segments to keep (those
        holding live messages, emptied ones still inside the dedup window, and emptied
        ones at or above the floor), and the deleted offsets within them as ``[start,
        stop)`` ranges.

        A segment at or above the floor is loaded by recovery whether it is listed or not
        (it may not have been stored when the checkpoint was taken), so its deletes must
        be in the checkpoint even once every message in it is gone: the delete logs
        that held them are folded and removed."""
        while self._retained and self._retained[0][3] <= now:
            self._retained.popleft()
        self._emptied = [entry for entry in self._emptied if entry[1] >= floor]
        emptied = {name: (first, end) for name, first, end, _ in self._retained}
        emptied.update({name: (first, end) for name, first, end in self._emptied})
        names = list(emptied)
        ranges = list(emptied.values())
        for chunk in self._chunks:
            flags = np.concatenate(([False], chunk.deleted, [False])).astype(np.int8)
            edges = np.flatnonzero(np.diff(flags))
            ranges += [(chunk.first + int(a), chunk.first + int(b)) for a, b in zip(edges[::2], edges[1::2])]
            names.append(chunk.segment)
        return tuple(names), tuple(ranges)

    # --------------------------------------------------------------- visibility

    def change_visibility(self, offset: int, token: int, receipt: str, timeout_s: float, now: float) -> None:
        """Make one in-flight message visible again after ``timeout_s``."""
        found = self._locate(offset)
        if found is None:
            raise InvalidReceipt(receipt, "the message was deleted")
        chunk, row = found
        if chunk.deleted[row] or chunk.token[row] != token:
            reason = "the message was deleted" if chunk.deleted[row] else "not the latest receipt of this message"
            raise InvalidReceipt(receipt, reason)
        chunk.visible_at[row] = now + timeout_s
        chunk.deadline = min(chunk.deadline, now + timeout_s)
        self._next_deadline = min(self._next_deadline, chunk.deadline)

    def _locate(self, offset: int) -> tuple[Chunk, int] | None:
        index = bisect.bisect_right(self._firsts, offset) - 1
        if index < 0 or offset >= self._chunks[index].end:
            return None
        return self._chunks[index], offset - self._chunks[index].first

    # -------------------------------------------------------------------- state

    def has_visible(self, now: float) -> bool:
        """Would a receive at ``now`` return anything? Cheap: no scan unless a deadline passed."""
        self._expire(now)
        if self._fresh:
            return True
        if self._next_deadline > now:
            return False
        return any(len(due) for _chunk, due in self._due_rows(now))

    def next_deadline(self) -> float:
        """The earliest time an in-flight message may become visible again."""
        return self._next_deadline

    def stats(self, now: float) -> LogStats:
        self._expire(now)
        in_flight = 0
        for chunk in self._chunks:
            if chunk.first >= self._cursor:
                break
            delivered = self._delivered_rows(chunk)
            in_flight += int(np.count_nonzero((chunk.visible_at[:delivered] > now) & ~chunk.deleted[:delivered]))
        return LogStats(visible=self._live - in_flight, in_flight=in_flight, stored_bytes=self._bytes)

    def _expire(self, now: float) -> None:
        """Drop messages older than the retention period, oldest first."""
        cutoff = now - self.retention_s
        while self._chunks:
            chunk = self._chunks[0]
            if chunk.sent_at[chunk.expired] >= cutoff:
                break
            stop = int(np.searchsorted(chunk.sent_at, cutoff, side="left"))
            rows = np.arange(chunk.expired, stop)
            rows = rows[~chunk.deleted[rows]]
            chunk.deleted[rows] = True
            chunk.live -= len(rows)
            self._live -= len(rows)
            self._fresh -= int(np.count_nonzero(chunk.first + rows >= self._cursor))
            self._bytes -= int(chunk.sizes[rows].sum())
            chunk.expired = stop
            self._cursor = max(self._cursor, chunk.first + stop)
            if chunk.live == 0:
                self._drop(chunk)
            else:
                break


def _delivery(chunk: Chunk, rows: np.ndarray, epoch: int) -> pa.RecordBatch:
    assert chunk.batch is not None, "the service reloads an evicted chunk before receiving from it"
    if len(rows) == chunk.batch.num_rows:
        part = chunk.batch  # the whole segment: no copy
    else:
        # A copy of the rows, never a slice: a slice keeps (and pickles, on its way to the
        # caller) the whole segment's buffers, so receiving 2 messages of a 10 MB segment
        # would send 10 MB.
        part = chunk.batch.take(pa.array(rows))
    extra = [
        pa.array(chunk.receive_count[rows]),
        pa.array(chunk.token[rows]),
        pa.array(np.full(len(rows), epoch, np.int64)),
    ]
    return pa.RecordBatch.from_arrays([*part.columns, *extra], schema=DELIVERY_SCHEMA)


def _text(receipts: Sequence[str] | pa.Array, index: int) -> str:
    """A receipt's text for an error message (receipts may be an Arrow column, or
    absent in tests that pass offsets and tokens only)."""
    if index >= len(receipts):
        return "?"
    receipt = receipts[int(index)]
    return receipt.as_py() if isinstance(receipt, pa.Scalar) else str(receipt)
