"""Replication between a partition's leader and its replicas: the parts without Ray.

With ``durability="replicas"`` a leader acknowledges a write once every in-sync
replica holds it, and stores it in the background. A replica therefore holds
exactly what its leader has acknowledged but not yet stored (``HeldWrites``);
the leader tells it when a write reached storage, and it lets go. Storage is
the record of everything else, so a promoted replica takes over from storage
(under a new epoch, which fences the old leader) and then stores what it held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa


class Replicator(Protocol):
    """How a leader reaches its replicas."""

    async def segment(self, batch: pa.RecordBatch) -> bool:
        """Hand a stamped segment to every in-sync replica; True if at least one holds it
        (replicas that fail or time out leave the in-sync set). Raises ``PartitionFenced``
        if a replica has seen a newer leader: this one must acknowledge nothing more."""

    async def deletes(self, seq: int, offsets: np.ndarray) -> bool:
        """Hand a delete log to every in-sync replica; True if at least one holds it."""

    def stored(self, offset_floor: int, seq_floor: int) -> None:
        """Tell replicas that every segment below ``offset_floor`` and every delete log
        below ``seq_floor`` is on storage (no reply awaited)."""

    def in_sync(self) -> int:
        """Replicas currently in sync."""

    def on_leader_node(self) -> int:
        """In-sync replicas placed on the leader's own node."""


@dataclass
class HeldWrites:
    """What a replica holds: writes its leader acknowledged but has not stored yet."""

    segments: dict[int, pa.RecordBatch] = field(default_factory=dict)
    deletes: dict[int, np.ndarray] = field(default_factory=dict)

    def add_segment(self, batch: pa.RecordBatch) -> None:
        self.segments[batch.column(0)[0].as_py()] = detach(batch)

    def add_deletes(self, seq: int, offsets: np.ndarray) -> None:
        self.deletes[seq] = np.array(offsets, np.int64, copy=True)

    def release(self, offset_floor: int, seq_floor: int) -> None:
        self.segments = {first: batch for first, batch in self.segments.items() if first >= offset_floor}
        self.deletes = {seq: offsets for seq, offsets in self.deletes.items() if seq >= seq_floor}


def detach(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A copy in this process's own memory, independent of the object store buffer
    it arrived in (whose owner, the leader, may die)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return pa.ipc.open_stream(sink.getvalue()).read_next_batch()
