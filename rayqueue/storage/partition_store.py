"""One partition's objects: leadership epochs, segments, delete logs, checkpoints.

Leadership and fencing, with nothing but put-once objects:

- A leader *takes over* a partition by claiming the next epoch (creating
  ``epochs/<e>.claim``, which only one writer can do), then reading what is on
  storage, then recording a *fence*: the first offset, delete sequence and
  checkpoint that are its own from now on.
- Every object a leader writes carries its epoch in its name, so two leaders
  never overwrite each other. After each write, and before acknowledging it, a
  leader checks that no newer epoch has been claimed; if one has, it is stale:
  it raises ``PartitionFenced`` and acknowledges nothing.
- Recovery ignores what older epochs wrote past a newer epoch's fence: such
  writes came after the takeover and were never acknowledged.

Because a takeover claims before it reads, whatever an old leader acknowledged
(it checked for a claim after writing) was written before the claim, and the
new leader sees it.

Checkpoints fold the delete logs and name the segments still holding live
messages; once one is stored (and the writer is still the leader), the delete
logs and dead segments it covers are removed, so recovery reads a bounded
number of objects however long the partition has run.

Recovery fails closed: a fence, checkpoint, delete log or segment that cannot be
read, fails its checksum or its checks, or two segments over the same offsets,
stop it with StorageCorrupt naming the object; nothing is skipped. Only names
that are not rayqueue's (``README``, ``.DS_Store``) are ignored, and a checkpoint
removes only objects this leader recovered, ruled on, or wrote: never one it
could not read or did not recognise.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from rayqueue import defaults
from rayqueue.errors import ObjectExists, PartitionFenced, StorageCorrupt
from rayqueue.storage import format
from rayqueue.storage.objects import ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Fence:
    """What a leader of ``epoch`` found when it took over."""

    epoch: int
    next_offset: int
    next_delete_seq: int
    #: ``(seq, epoch)`` of the checkpoint it recovered from, if any.
    checkpoint: tuple[int, int] | None

    def excludes(self, number: int, epoch: int, floor: int) -> bool:
        """Did an older leader write this object after this fence was set?"""
        return epoch < self.epoch and number >= floor

    def excludes_segment(self, first_offset: int, epoch: int) -> bool:
        return self.excludes(first_offset, epoch, self.next_offset)

    def excludes_deletes(self, seq: int, epoch: int) -> bool:
        return self.excludes(seq, epoch, self.next_delete_seq)

    def excludes_checkpoint(self, seq: int, epoch: int) -> bool:
        return epoch < self.epoch and (self.checkpoint is None or (seq, epoch) > self.checkpoint)

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str, epoch: int) -> Fence:
        """The fence of ``epoch`` (from its name) stored at ``path``; StorageCorrupt if malformed."""
        checkpoint = data.get("checkpoint")
        if checkpoint is not None:
            if not isinstance(checkpoint, list) or len(checkpoint) != 2:
                raise StorageCorrupt(path, f"fence checkpoint {checkpoint!r} is not [seq, epoch]")
            checkpoint = (
                _natural(checkpoint[0], "checkpoint seq", path),
                _natural(checkpoint[1], "checkpoint epoch", path),
            )
        fence = cls(
            epoch=_natural(data.get("epoch"), "epoch", path),
            next_offset=_natural(data.get("next_offset"), "next_offset", path),
            next_delete_seq=_natural(data.get("next_delete_seq"), "next_delete_seq", path),
            checkpoint=checkpoint,
        )
        if fence.epoch != epoch:
            raise StorageCorrupt(path, f"fence says epoch {fence.epoch}, its name {epoch}")
        return fence


@dataclass(frozen=True)
class Checkpoint:
    """A partition's state folded into one object.

    Delete logs numbered below ``seq`` are folded in; segments starting below
    ``next_offset`` that are not listed hold no live message.
    """

    seq: int
    epoch: int
    next_offset: int
    segments: tuple[str, ...]
    #: Deleted offsets within the listed segments, as ``[start, stop)`` ranges.
    deleted: tuple[tuple[int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "epoch": self.epoch,
            "next_offset": self.next_offset,
            "segments": list(self.segments),
            "deleted": [list(r) for r in self.deleted],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str = "checkpoint") -> Checkpoint:
        """Parse and check a stored checkpoint; StorageCorrupt naming ``path`` if it is not sound."""
        segments, deleted = data.get("segments"), data.get("deleted")
        if not isinstance(segments, list) or not all(isinstance(name, str) for name in segments):
            raise StorageCorrupt(path, "checkpoint segments are not a list of names")
        if not isinstance(deleted, list) or not all(isinstance(r, list) and len(r) == 2 for r in deleted):
            raise StorageCorrupt(path, "checkpoint deleted ranges are not [start, stop) pairs")
        checkpoint = cls(
            seq=_natural(data.get("seq"), "seq", path),
            epoch=_natural(data.get("epoch"), "epoch", path),
            next_offset=_natural(data.get("next_offset"), "next_offset", path),
            segments=tuple(segments),
            deleted=tuple((_natural(a, "range start", path), _natural(b, "range stop", path)) for a, b in deleted),
        )
        checkpoint.check(path)
        return checkpoint

    def check(self, path: str) -> None:
        """Every listed name is a segment's, and the deleted ranges are non-empty,
        disjoint, and each inside one listed segment (a segment starting below
        ``next_offset`` ends by it): recovery expands them into single offsets, so
        a damaged range must be refused before it is expanded."""
        firsts = sorted({_segment_first(name, path) for name in self.segments})
        previous_stop = 0
        # The writer lists retained (emptied) segments before live ones: not in order.
        for start, stop in sorted(self.deleted):
            if start >= stop or start < previous_stop:
                raise StorageCorrupt(path, f"deleted range [{start}, {stop}) is empty or overlaps another")
            if stop > _span_end(firsts, start, self.next_offset):
                raise StorageCorrupt(path, f"deleted range [{start}, {stop}) lies outside the listed segments")
            previous_stop = stop


def _segment_first(name: str, path: str) -> int:
    first = _parse(name)[0] if name.startswith("segments/") else None
    if first is None:
        raise StorageCorrupt(path, f"checkpoint lists {name!r}, which is not a segment name")
    return first


def _span_end(firsts: list[int], offset: int, next_offset: int) -> int:
    """How far a range starting at ``offset`` may reach: to the next listed segment,
    and to ``next_offset`` for a segment below it (those were stored whole);
    -1 (nothing) if no listed segment starts at or before ``offset``."""
    index = int(np.searchsorted(firsts, offset, side="right")) - 1
    if index < 0:
        return -1
    limit = firsts[index + 1] if index + 1 < len(firsts) else np.iinfo(np.int64).max
    return min(limit, next_offset) if firsts[index] < next_offset else limit


def _natural(value: Any, what: str, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StorageCorrupt(path, f"{what} {value!r} is not a whole number >= 0")
    return value


class StoredSegments:
    """A partition's segments in offset order, read as they are iterated (at most
    ``read_ahead`` ahead, in parallel), so that recovering a backlog larger than memory
    never holds all of it at once.

    A segment that cannot be read raises StorageCorrupt; so does one whose offsets
    overlap the segment before it, found as they are read (names alone show only
    segments with the same first offset, which recovery refuses at once)."""

    def __init__(self, read: Callable[[str], pa.Table], read_ahead: int = 1) -> None:
        self._read = read
        self._read_ahead = read_ahead
        # [first offset, name, rows if kept, end if known]
        self._entries: list[list[Any]] = []

    def add(self, name: str, table: pa.Table | None = None) -> None:
        """A segment by name (read later), or with its rows at hand."""
        first = _parse(name)[0] or 0
        end = _end(table, first) if table is not None else None
        self._entries.append([first, name, table, end])
        self._entries.sort(key=lambda entry: entry[0])

    def first_offsets(self) -> set[int]:
        return {entry[0] for entry in self._entries}

    def read(self, index: int) -> pa.Table:
        """Read the ``index``-th segment now and keep its rows (for the last one)."""
        entry = self._entries[index]
        if entry[2] is None:
            entry[2] = self._read(entry[1])
            entry[3] = _end(entry[2], entry[0])
        return entry[2]

    def overlapping(self, first: int, end: int) -> list[str]:
        """Names of the segments holding any offset in ``[first, end)``.

        For a segment about to be stored beside these (a replica's held write): it
        must not overlap one already stored. Reads at most the segment before
        ``first`` whose end is not known yet, and keeps only that end."""
        names = [name for start, name, _t, _e in self._entries if first <= start < end]
        before = [index for index, entry in enumerate(self._entries) if entry[0] < first]
        if before and self._end_of(before[-1]) > first:
            names.insert(0, self._entries[before[-1]][1])
        return names

    def overlaps(self, first: int, end: int) -> bool:
        """Whether any segment holds an offset in ``[first, end)`` (see :meth:`overlapping`)."""
        return bool(self.overlapping(first, end))

    def _end_of(self, index: int) -> int:
        entry = self._entries[index]
        if entry[3] is None:
            entry[3] = _end(self._read(entry[1]), entry[0])
        return int(entry[3])

    def __iter__(self) -> Iterator[tuple[str, pa.Table]]:
        previous_name, previous_end = "", 0
        for entry, table in zip(self._entries, self._tables()):
            first, name = entry[0], entry[1]
            entry[3] = _end(table, first)
            if not table.num_rows:
                continue
            if first < previous_end:
                raise StorageCorrupt(
                    name, f"offsets from {first} overlap segment {previous_name!r} (up to {previous_end - 1})"
                )
            previous_name, previous_end = name, entry[3]
            yield name, table

    def _tables(self) -> Iterator[pa.Table]:
        """Each segment's rows, in order. On S3 a takeover reads every segment still in
        the dedup window (hundreds, at about 20 ms each), so several are read at once."""
        entries = iter(self._entries)
        if self._read_ahead <= 1:
            for _first, name, table, _end_known in entries:
                yield table if table is not None else self._read(name)
            return
        with ThreadPoolExecutor(self._read_ahead, thread_name_prefix="rayqueue-recovery") as pool:
            reads: deque[Future[pa.Table]] = deque()

            def read_next() -> None:
                entry = next(entries, None)
                if entry is not None:
                    table = entry[2]
                    reads.append(pool.submit(lambda: table) if table is not None else pool.submit(self._read, entry[1]))

            for _ in range(self._read_ahead):
                read_next()
            while reads:
                table = reads.popleft().result()
                read_next()
                yield table

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, StoredSegments)) else NotImplemented


def _end(table: pa.Table, first: int) -> int:
    """One past the last offset in ``table`` (``first`` if it is empty)."""
    return int(table.column("offset")[-1].as_py()) + 1 if table.num_rows else first


@dataclass
class RecoveredPartition:
    """What a takeover found on storage, in offset order."""

    segments: StoredSegments
    deleted_offsets: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    #: First offset no stored segment has used: new segments start here.
    next_offset: int = 0
    #: First delete-log sequence number not used yet.
    next_delete_seq: int = 0
    checkpoint: tuple[int, int] | None = None
    #: Below this offset, a segment the checkpoint does not list held only deleted messages.
    checkpointed_below: int = 0


def queue_prefix(queue: str, uid: str) -> str:
    """Where one queue's objects live. The uid (unique to each queue ever created) keeps
    a recreated queue, a late write from a dying actor of an older queue of the same
    name, or names that differ only in case (on a case-insensitive disk) apart."""
    return f"queues/{queue}.{uid}"


def partition_prefix(queue: str, uid: str, partition: int) -> str:
    return f"{queue_prefix(queue, uid)}/{partition}"


class PartitionStore:
    """Writes and reads one partition's objects. Blocking: call it from a thread."""

    def __init__(
        self, store: ObjectStore, queue: str, partition: int, uid: str, read_ahead: int = defaults.RECOVERY_READ_AHEAD
    ) -> None:
        """``read_ahead``: segments a takeover reads at once (1: one at a time, no threads)."""
        self._store = store.child(partition_prefix(queue, uid, partition))
        self._read_ahead = read_ahead
        self.epoch = 0
        #: Segments, delete logs and checkpoints read since this store was made.
        self.objects_read = 0
        # Segments, delete logs and checkpoints this leader recovered or ruled on at
        # takeover, or wrote since: the only names a checkpoint may remove.
        self._known: set[str] = set()
        # Fences are put-once: each is read (and checked) once, before and after the claim.
        self._fence_cache: dict[str, Fence] = {}

    # ---------------------------------------------------------------- takeover

    def take_over(self) -> RecoveredPartition:
        """Become the partition's leader under a new epoch; return what is stored.

        Raises StorageCorrupt, naming the object, if anything recovery needs is
        unreadable. Fences are checked before the claim too, so a damaged store
        does not use up an epoch per attempt."""
        self._fences()
        self.epoch = self._claim()
        recovered = self._load()
        fence = {
            "epoch": self.epoch,
            "next_offset": recovered.next_offset,
            "next_delete_seq": recovered.next_delete_seq,
            "checkpoint": list(recovered.checkpoint) if recovered.checkpoint else None,
        }
        self._store.put_once(format.fence_name(self.epoch), format.encode_json("fence", fence))
        self.check_leader()
        return recovered

    def _claim(self) -> int:
        epoch = max((number for _name, number, _kind in self._epoch_objects()), default=0) + 1
        # A token of its own makes each claim's bytes unique, so a retried create can
        # tell its own claim (response lost) from another leader's.
        token = uuid.uuid4().hex.encode()
        while True:
            try:
                self._store.put_once(format.claim_name(epoch), token)
                return epoch
            except ObjectExists:
                epoch += 1  # another leader claimed it first: take the next

    def check_leader(self) -> None:
        """Raise PartitionFenced if a newer epoch has been claimed (StorageUnavailable
        if storage cannot tell: never assume there is none)."""
        if self._store.exists(format.claim_name(self.epoch + 1)):
            raise PartitionFenced(self._store.url, self.epoch)

    def _epoch_objects(self) -> list[tuple[str, int, str]]:
        """``(name, epoch, "claim" | "fence")`` in ``epochs/``; other names are ignored."""
        found = []
        for name in self._store.list("epochs/"):
            try:
                found.append((name, *format.parse_epoch_name(name)))
            except ValueError:
                log.warning("ignoring foreign object %s", self._where(name))
        return found

    def _fences(self) -> list[Fence]:
        """Every other leader's fence, each read and checked."""
        fences = []
        for name, epoch, kind in self._epoch_objects():
            if kind != "fence" or epoch == self.epoch:
                continue
            if name not in self._fence_cache:
                self._fence_cache[name] = self._read_object(name, self._decode_fence(epoch))
            fences.append(self._fence_cache[name])
        return fences

    @staticmethod
    def _decode_fence(epoch: int) -> Callable[[bytes, str], Fence]:
        return lambda data, path: Fence.from_json(format.decode_json(data, path, "fence"), path, epoch)

    def _load(self) -> RecoveredPartition:
        fences = self._fences()
        recovered = RecoveredPartition(StoredSegments(self.read_segment, self._read_ahead))
        recovered.next_offset = max((f.next_offset for f in fences), default=0)
        recovered.next_delete_seq = max((f.next_delete_seq for f in fences), default=0)
        checkpoint = self._newest_checkpoint(fences, recovered)
        self._load_segments(fences, checkpoint, recovered)
        deleted = [_expand(checkpoint.deleted)] if checkpoint else []
        for name, seq, epoch in self._objects("deletes/"):
            self._known.add(name)
            if any(f.excludes_deletes(seq, epoch) for f in fences):
                continue
            recovered.next_delete_seq = max(recovered.next_delete_seq, seq + 1)
            if checkpoint and seq < checkpoint.seq:
                continue  # folded into the checkpoint
            deleted.append(self._read_object(name, format.decode_deletes))
            self.objects_read += 1
        if deleted:
            recovered.deleted_offsets = np.unique(np.concatenate(deleted))
        return recovered

    def _load_segments(self, fences: list[Fence], checkpoint: Checkpoint | None, recovered: RecoveredPartition) -> None:
        """Adopt the segments recovery must read (they are read later, as iterated)."""
        live = set(checkpoint.segments) if checkpoint else set()
        floor = checkpoint.next_offset if checkpoint else 0
        recovered.checkpointed_below = floor
        adopted: dict[int, str] = {}
        for name, first, epoch in self._objects("segments/"):
            self._known.add(name)
            if any(f.excludes_segment(first, epoch) for f in fences):
                continue
            if first < floor and name not in live:
                continue  # every message in it was deleted
            if first in adopted:
                # Two copies over the same offsets (a late, out-of-order store of one a
                # new leader stored again): loading both would deliver one twice.
                raise StorageCorrupt(self._where(name), f"overlaps {self._where(adopted[first])}: same first offset")
            adopted[first] = name
            recovered.segments.add(name)
            recovered.next_offset = max(recovered.next_offset, first)
        recovered.next_offset = max(recovered.next_offset, self._end_of_last(recovered.segments))

    def _end_of_last(self, segments: StoredSegments) -> int:
        """One past the last offset stored: the fence must know it before the segments
        are iterated, so the last non-empty one is read here (and kept)."""
        for index in reversed(range(len(segments))):
            table = segments.read(index)
            if table.num_rows:
                return _end(table, 0)
        return 0

    def read_segment(self, name: str) -> pa.Table:
        """One segment's rows. Raises StorageCorrupt naming it if it cannot be read,
        fails its checks, or does not hold exactly the offsets its name starts at."""
        table = self._read_object(name, format.decode_segment)
        first = _parse(name)[0]
        offsets = table.column("offset").to_numpy()
        if first is None or not np.array_equal(offsets, np.arange(first, first + len(offsets))):
            raise StorageCorrupt(self._where(name), "its offsets are not consecutive from the one its name gives")
        self.objects_read += 1
        return table

    def _newest_checkpoint(self, fences: list[Fence], recovered: RecoveredPartition) -> Checkpoint | None:
        """The newest checkpoint no fence excludes. If it is unreadable, recovery stops:
        an older one would do no good, since the newer one may have removed the delete
        logs it folded in (deleted messages would come back)."""
        candidates = []
        for name, seq, epoch in self._objects("checkpoints/"):
            self._known.add(name)
            if not any(f.excludes_checkpoint(seq, epoch) for f in fences):
                candidates.append((seq, epoch, name))
        if not candidates:
            return None
        seq, epoch, name = max(candidates)
        checkpoint = self._read_object(name, _decode_checkpoint)
        if (checkpoint.seq, checkpoint.epoch) != (seq, epoch):
            raise StorageCorrupt(self._where(name), f"holds seq {checkpoint.seq}, epoch {checkpoint.epoch}")
        self.objects_read += 1
        recovered.checkpoint = (seq, epoch)
        recovered.next_offset = max(recovered.next_offset, checkpoint.next_offset)
        recovered.next_delete_seq = max(recovered.next_delete_seq, checkpoint.seq)
        return checkpoint

    def _objects(self, prefix: str) -> list[tuple[str, int, int]]:
        """``(name, number, epoch)`` of the objects under ``prefix``; foreign names are
        ignored (and so never read, adopted or removed)."""
        found = []
        for name in self._store.list(prefix):
            number, epoch = _parse(name)
            if number is None:
                log.warning("ignoring foreign object %s", self._where(name))
            else:
                found.append((name, number, epoch))
        return found

    def _read_object(self, name: str, decode: Callable[[bytes, str], T]) -> T:
        """Read and decode an object recovery needs; StorageCorrupt naming it if it cannot."""
        path = self._where(name)
        try:
            data = self._store.get(name)
        except FileNotFoundError:
            raise StorageCorrupt(path, "listed, then gone before it was read") from None
        return decode(data, path)

    def _where(self, name: str) -> str:
        return f"{self._store.url}/{name}"

    # ------------------------------------------------------------------ writes

    def segment_name(self, first_offset: int) -> str:
        return format.segment_name(first_offset, self.epoch)

    def write_segment(self, batch: pa.RecordBatch) -> str:
        """Store a segment whose first offset is ``batch['offset'][0]``.

        Durable on return, and this leader was still the leader after writing it.
        """
        name = self.segment_name(batch.column(0)[0].as_py())
        self._known.add(name)
        self._store.put_once(name, format.encode_segment(batch, self.epoch))
        self.check_leader()
        return name

    def write_deletes(self, offsets: np.ndarray, seq: int) -> None:
        """Store one delete log; durable on return, and still the leader."""
        name = format.deletes_name(seq, self.epoch)
        self._known.add(name)
        self._store.put_once(name, format.encode_deletes(offsets, self.epoch))
        self.check_leader()

    def write_checkpoint(self, checkpoint: Checkpoint) -> int:
        """Store a checkpoint, then remove what it makes unnecessary. Returns objects removed.

        Only objects this leader recovered, ruled on at takeover, or wrote are ever
        removed: not a foreign name, nor one that appeared since it listed."""
        name = format.checkpoint_name(checkpoint.seq, self.epoch)
        self._known.add(name)
        self._store.put_once(name, format.encode_json("checkpoint", checkpoint.to_json()))
        self.check_leader()  # a stale leader must not remove anything
        live = set(checkpoint.segments)
        newest = _parse(name)
        garbage = [n for n, first, _ in self._objects("segments/") if n not in live and first < checkpoint.next_offset]
        garbage += [n for n, seq, _ in self._objects("deletes/") if seq < checkpoint.seq]
        garbage += [n for n, seq, epoch in self._objects("checkpoints/") if (seq, epoch) < newest]
        garbage = [n for n in garbage if n in self._known]
        self._store.delete(garbage)
        self._known.difference_update(garbage)
        return len(garbage)


def _decode_checkpoint(data: bytes, path: str) -> Checkpoint:
    return Checkpoint.from_json(format.decode_json(data, path, "checkpoint"), path)


def _parse(name: str) -> tuple[int | None, int]:
    try:
        return format.parse_object_name(name)
    except ValueError:
        return None, 0


def _expand(ranges: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``[start, stop)`` ranges (checked by :meth:`Checkpoint.check`) as single offsets."""
    if not ranges:
        return np.empty(0, np.int64)
    return np.concatenate([np.arange(start, stop, dtype=np.int64) for start, stop in ranges])
