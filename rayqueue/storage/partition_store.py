"""One partition's objects: its segments of messages and its delete logs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from rayqueue.errors import StorageCorrupt
from rayqueue.storage import format
from rayqueue.storage.objects import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class RecoveredPartition:
    """Everything on storage for one partition, in offset order."""

    segments: list[pa.Table] = field(default_factory=list)
    deleted_offsets: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    #: First offset no segment has used: new segments start here.
    next_offset: int = 0
    #: First delete-log sequence number not used yet.
    next_delete_seq: int = 0
    objects_read: int = 0


def partition_prefix(queue: str, partition: int) -> str:
    return f"queues/{queue}/{partition}"


class PartitionStore:
    """Writes and reads one partition's objects. Blocking: call it from a thread."""

    def __init__(self, store: ObjectStore, queue: str, partition: int) -> None:
        self._store = store.child(partition_prefix(queue, partition))

    def write_segment(self, batch: pa.RecordBatch, epoch: int) -> str:
        """Store a segment whose first offset is ``batch['offset'][0]``; durable on return."""
        name = format.segment_name(batch.column(0)[0].as_py(), epoch)
        self._store.put_once(name, format.encode_segment(batch, epoch))
        return name

    def write_deletes(self, offsets: np.ndarray, seq: int, epoch: int) -> str:
        """Store one delete log; durable on return."""
        name = format.deletes_name(seq, epoch)
        self._store.put_once(name, format.encode_deletes(offsets, epoch))
        return name

    def load(self) -> RecoveredPartition:
        """Read every readable segment and delete log.

        An object that does not decode (a torn write on a filesystem without
        atomic creates, or a foreign file) is skipped and logged, never loaded.
        """
        recovered = RecoveredPartition()
        for name in self._store.list("segments/"):
            try:
                first, _epoch = format.parse_object_name(name)
                table = format.decode_segment(self._store.get(name), name)
            except (ValueError, StorageCorrupt) as error:
                log.warning("skipping segment %s: %s", name, error)
                continue
            recovered.objects_read += 1
            if table.num_rows:
                recovered.segments.append(table)
                last = table.column("offset")[-1].as_py()
                recovered.next_offset = max(recovered.next_offset, last + 1)
            recovered.next_offset = max(recovered.next_offset, first)
        deleted = []
        for name in self._store.list("deletes/"):
            try:
                seq, _epoch = format.parse_object_name(name)
                deleted.append(format.decode_deletes(self._store.get(name), name))
            except (ValueError, StorageCorrupt) as error:
                log.warning("skipping delete log %s: %s", name, error)
                continue
            recovered.objects_read += 1
            recovered.next_delete_seq = max(recovered.next_delete_seq, seq + 1)
        if deleted:
            recovered.deleted_offsets = np.unique(np.concatenate(deleted))
        return recovered
