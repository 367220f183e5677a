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
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from rayqueue.errors import ObjectExists, PartitionFenced, StorageCorrupt
from rayqueue.storage import format
from rayqueue.storage.objects import ObjectStore

log = logging.getLogger(__name__)


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
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            seq=int(data["seq"]),
            epoch=int(data["epoch"]),
            next_offset=int(data["next_offset"]),
            segments=tuple(data["segments"]),
            deleted=tuple((int(a), int(b)) for a, b in data["deleted"]),
        )


class StoredSegments:
    """A partition's segments in offset order, read one at a time as they are iterated,
    so that recovering a backlog larger than memory never holds all of it at once.
    Unreadable segments (torn or foreign) are skipped."""

    def __init__(self, read: Callable[[str], pa.Table | None]) -> None:
        self._read = read
        self._entries: list[tuple[int, str, pa.Table | None]] = []

    def add(self, name: str, table: pa.Table | None = None) -> None:
        """A segment by name (read later), or with its rows at hand."""
        self._entries.append((_parse(name)[0] or 0, name, table))
        self._entries.sort(key=lambda entry: entry[0])

    def first_offsets(self) -> set[int]:
        return {first for first, _, _ in self._entries}

    def read(self, index: int) -> pa.Table | None:
        """Read the ``index``-th segment now and keep its rows (for the last one)."""
        first, name, table = self._entries[index]
        if table is None:
            table = self._read(name)
            self._entries[index] = (first, name, table)
        return table

    def __iter__(self) -> Iterator[tuple[str, pa.Table]]:
        for _first, name, table in self._entries:
            table = table if table is not None else self._read(name)
            if table is not None and table.num_rows:
                yield name, table

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, StoredSegments)) else NotImplemented


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

    def __init__(self, store: ObjectStore, queue: str, partition: int, uid: str) -> None:
        self._store = store.child(partition_prefix(queue, uid, partition))
        self.epoch = 0
        #: Segments, delete logs and checkpoints read since this store was made.
        self.objects_read = 0

    # ---------------------------------------------------------------- takeover

    def take_over(self) -> RecoveredPartition:
        """Become the partition's leader under a new epoch; return what is stored."""
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
        claimed = [format.parse_epoch_name(name)[0] for name in self._store.list("epochs/")]
        epoch = max(claimed, default=0) + 1
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
        """Raise PartitionFenced if a newer epoch has been claimed."""
        if self._store.exists(format.claim_name(self.epoch + 1)):
            raise PartitionFenced(self._store.url, self.epoch)

    def _fences(self) -> list[Fence]:
        fences = []
        for name in self._store.list("epochs/"):
            epoch, kind = format.parse_epoch_name(name)
            if kind != "fence" or epoch == self.epoch:
                continue
            data = format.decode_json(self._store.get(name), name, "fence")
            checkpoint = tuple(data["checkpoint"]) if data["checkpoint"] else None
            fences.append(Fence(epoch, data["next_offset"], data["next_delete_seq"], checkpoint))  # type: ignore[arg-type]
        return fences

    def _load(self) -> RecoveredPartition:
        fences = self._fences()
        recovered = RecoveredPartition(StoredSegments(self.read_segment))
        recovered.next_offset = max((f.next_offset for f in fences), default=0)
        recovered.next_delete_seq = max((f.next_delete_seq for f in fences), default=0)
        checkpoint = self._newest_checkpoint(fences, recovered)
        live = set(checkpoint.segments) if checkpoint else set()
        floor = checkpoint.next_offset if checkpoint else 0
        recovered.checkpointed_below = floor
        for name in self._store.list("segments/"):
            first, epoch = _parse(name)
            if first is None or any(f.excludes_segment(first, epoch) for f in fences):
                continue
            if first < floor and name not in live:
                continue  # every message in it was deleted
            recovered.segments.add(name)
            recovered.next_offset = max(recovered.next_offset, first)
        recovered.next_offset = max(recovered.next_offset, self._end_of_last(recovered.segments))
        deleted = [_expand(checkpoint.deleted)] if checkpoint else []
        for name in self._store.list("deletes/"):
            seq, epoch = _parse(name)
            if seq is None or any(f.excludes_deletes(seq, epoch) for f in fences):
                continue
            recovered.next_delete_seq = max(recovered.next_delete_seq, seq + 1)
            if checkpoint and seq < checkpoint.seq:
                continue  # folded into the checkpoint
            offsets = self._read(name, format.decode_deletes)
            if offsets is not None:
                self.objects_read += 1
                deleted.append(offsets)
        if deleted:
            recovered.deleted_offsets = np.unique(np.concatenate(deleted))
        return recovered

    def _end_of_last(self, segments: StoredSegments) -> int:
        """One past the last offset stored: the fence must know it before the segments
        are iterated, so the last readable one is read here (and kept)."""
        for index in reversed(range(len(segments))):
            table = segments.read(index)
            if table is not None and table.num_rows:
                return table.column("offset")[-1].as_py() + 1
        return 0

    def read_segment(self, name: str) -> pa.Table | None:
        """One segment's rows, or None if it is unreadable (torn or foreign)."""
        table = self._read(name, format.decode_segment)
        if table is not None:
            self.objects_read += 1
        return table

    def _newest_checkpoint(self, fences: list[Fence], recovered: RecoveredPartition) -> Checkpoint | None:
        for name in reversed(self._store.list("checkpoints/")):
            seq, epoch = _parse(name)
            if seq is None or any(f.excludes_checkpoint(seq, epoch) for f in fences):
                continue
            try:
                checkpoint = Checkpoint.from_json(format.decode_json(self._store.get(name), name, "checkpoint"))
            except (StorageCorrupt, KeyError, TypeError, ValueError, FileNotFoundError) as error:
                log.warning("skipping checkpoint %s: %s", name, error)
                continue
            self.objects_read += 1
            recovered.checkpoint = (seq, epoch)
            recovered.next_offset = max(recovered.next_offset, checkpoint.next_offset)
            recovered.next_delete_seq = max(recovered.next_delete_seq, checkpoint.seq)
            return checkpoint
        return None

    def _read(self, name: str, decode: Any) -> Any:
        """Decode an object, or None if it is unreadable: a torn write or a foreign file
        is skipped and logged, never loaded. (Put-once writes are atomic on every
        backend rayqueue writes to; this guards against anything else.)"""
        try:
            return decode(self._store.get(name), name)
        except (StorageCorrupt, FileNotFoundError) as error:
            log.warning("skipping %s: %s", name, error)
            return None

    # ------------------------------------------------------------------ writes

    def segment_name(self, first_offset: int) -> str:
        return format.segment_name(first_offset, self.epoch)

    def write_segment(self, batch: pa.RecordBatch) -> str:
        """Store a segment whose first offset is ``batch['offset'][0]``.

        Durable on return, and this leader was still the leader after writing it.
        """
        name = self.segment_name(batch.column(0)[0].as_py())
        self._store.put_once(name, format.encode_segment(batch, self.epoch))
        self.check_leader()
        return name

    def write_deletes(self, offsets: np.ndarray, seq: int) -> None:
        """Store one delete log; durable on return, and still the leader."""
        self._store.put_once(format.deletes_name(seq, self.epoch), format.encode_deletes(offsets, self.epoch))
        self.check_leader()

    def write_checkpoint(self, checkpoint: Checkpoint) -> int:
        """Store a checkpoint, then remove what it makes unnecessary. Returns objects removed."""
        name = format.checkpoint_name(checkpoint.seq, self.epoch)
        self._store.put_once(name, format.encode_json("checkpoint", checkpoint.to_json()))
        self.check_leader()  # a stale leader must not remove anything
        live = set(checkpoint.segments)
        garbage = [
            n
            for n in self._store.list("segments/")
            if n not in live and (_parse(n)[0] or 0) < checkpoint.next_offset
        ]
        garbage += [n for n in self._store.list("deletes/") if (_parse(n)[0] or 0) < checkpoint.seq]
        garbage += [n for n in self._store.list("checkpoints/") if n < name]
        self._store.delete(garbage)
        return len(garbage)


def _parse(name: str) -> tuple[int | None, int]:
    try:
        return format.parse_object_name(name)
    except ValueError:
        log.warning("ignoring foreign object %s", name)
        return None, 0


def _expand(ranges: tuple[tuple[int, int], ...]) -> np.ndarray:
    if not ranges:
        return np.empty(0, np.int64)
    return np.concatenate([np.arange(start, stop, dtype=np.int64) for start, stop in ranges])
