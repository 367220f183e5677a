"""Replication between a partition's leader and its replicas: the parts without Ray.

With ``durability="replicas"`` a leader acknowledges a write once every replica
of its in-sync set holds it and one of them runs on another node, and stores it
in the background. A replica on the leader's own node is lost with that node, so
its word alone never lets a write skip storage (a one-node cluster therefore
acknowledges once stored, as with durability "storage"). A replica
therefore holds what its leader acknowledged but has not stored yet
(``HeldWrites``); the leader tells it when a write is settled (stored and taken
into the log), and it lets go. Storage is the record of everything else, so a
promoted replica takes over from storage (under a new epoch, which fences the
old leader) and then stores what it held.

The in-sync set is the coordinator's recorded fact, as Kafka's controller keeps
it: the leader's own set is always a superset of the recorded one. A replica is
added locally first and then reported; a replica that fails is removed locally
only once the coordinator has recorded its removal, and until then every write
waits for storage. So every replica the coordinator may promote holds every
write acknowledged without storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from rayqueue import defaults
from rayqueue.backoff import Backoff
from rayqueue.errors import PartitionFenced

log = logging.getLogger(__name__)


@dataclass
class HeldWrites:
    """What a replica holds: writes its leader acknowledged but has not settled yet."""

    segments: dict[int, pa.RecordBatch] = field(default_factory=dict)
    deletes: dict[int, np.ndarray] = field(default_factory=dict)

    def add_segment(self, batch: pa.RecordBatch) -> None:
        self.segments[batch.column(0)[0].as_py()] = detach(batch)

    def add_deletes(self, seq: int, offsets: np.ndarray) -> None:
        self.deletes[seq] = np.array(offsets, np.int64, copy=True)

    def release(self, offset_floor: int, seq_floor: int) -> None:
        self.segments = {first: batch for first, batch in self.segments.items() if first >= offset_floor}
        self.deletes = {seq: offsets for seq, offsets in self.deletes.items() if seq >= seq_floor}


class ReplicaState:
    """A replica's side: what it holds, and whose writes it takes.

    Invariant: it takes writes (and releases) only from the newest leader epoch it
    has heard of, whether from that leader's writes or from the coordinator's
    ``fence`` at a promotion, and none once it leads itself. A leader that was
    replaced but still runs therefore learns it is fenced before it can count
    this replica's acknowledgement.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self.held = HeldWrites()
        #: The newest leader epoch this replica has heard of.
        self.leader_epoch = 0
        self.promoted = False

    def hold_segment(self, epoch: int, batch: pa.RecordBatch) -> None:
        self._follow(epoch)
        self.held.add_segment(batch)

    def hold_deletes(self, epoch: int, seq: int, offsets: np.ndarray) -> None:
        self._follow(epoch)
        self.held.add_deletes(seq, offsets)

    def release(self, epoch: int, offset_floor: int, seq_floor: int) -> None:
        """Let go of what the leader of ``epoch`` settled; a late release from an older
        leader is ignored (it could drop what the newer one sent)."""
        if not self.promoted and epoch >= self.leader_epoch:
            self.leader_epoch = epoch
            self.held.release(offset_floor, seq_floor)

    def fence(self, epoch: int) -> None:
        """A leader of ``epoch`` was promoted: refuse every older one from now on."""
        self.leader_epoch = max(self.leader_epoch, epoch)

    def promote(self) -> HeldWrites:
        """Stop taking writes; return what is held, for the takeover to store."""
        self.promoted = True
        held, self.held = self.held, HeldWrites()
        return held

    def stay(self, held: HeldWrites) -> None:
        """The takeover failed (storage, say): hold ``held`` again, as a replica. No newer
        leader's writes were refused meanwhile that it should have taken: it refused them
        all, so that leader counts it out of sync."""
        self.promoted = False
        self.held = held

    def _follow(self, epoch: int) -> None:
        if self.promoted or epoch < self.leader_epoch:
            raise PartitionFenced(self._name, epoch)
        self.leader_epoch = epoch


class ReplicaLink(Protocol):
    """How a leader reaches its replicas and the coordinator: Ray in production
    (``rayqueue.actors.ray_replicator``), fakes in tests and the simulation."""

    async def hold(self, replica: str, method: str, args: tuple[Any, ...]) -> None:
        """Call ``hold_segment`` or ``hold_deletes`` on a replica; raise if it did not take it."""

    def release(self, replica: str, epoch: int, offset_floor: int, seq_floor: int) -> None:
        """Tell a replica what is settled (no reply awaited)."""

    async def report_in_sync(self, replica: str) -> bool:
        """Ask the coordinator to record ``replica`` as in sync; False if it refused."""

    async def report_lost(self, replicas: list[str]) -> bool:
        """Ask the coordinator to record that these replicas left the in-sync set (and
        replace them); True once recorded, False if it refused (this leader was replaced)."""

    def apart(self, replica: str) -> bool:
        """Whether this replica is known to run on another node than the leader: only
        such a replica survives the loss of the leader's node."""


class ReplicaSet:
    """A leader's replicas: who is joining, who is in sync, who is leaving.

    ``acknowledging``: with durability "replicas" the replicas take every write and
    their acknowledgement counts; with durability "storage" they are standbys that
    hold nothing (told nothing of later deletes, they must hold nothing).
    """

    def __init__(self, link: ReplicaLink, acknowledging: bool, timeout_s: float = defaults.REPLICA_TIMEOUT_S) -> None:
        self._link = link
        #: Returns once everything written so far is stored, or raises PartitionFenced if a
        #: write failed for good (set by the leader's service).
        self.stored: Callable[[], Awaitable[None]] = _nothing
        self._acknowledging = acknowledging
        self._timeout_s = timeout_s
        self._joining: set[str] = set()
        self._in_sync: set[str] = set()
        #: Failed in-sync replicas whose removal the coordinator has not recorded yet:
        #: they still count in the acknowledgement rule, so writes wait for storage.
        self._leaving: set[str] = set()
        #: In-sync replicas the coordinator has recorded as such: only they may be
        #: promoted, so a write is acknowledged without storage only if one holds it.
        self._recorded: set[str] = set()
        self._reports: set[asyncio.Task[None]] = set()
        #: The leader's epoch, set once it has taken over; every write carries it.
        self.epoch = 0

    async def attach(self, replicas: list[str], unstored: Callable[[], HeldWrites]) -> None:
        """Replicate to these replicas from now on; return once the new ones caught up.

        An in-sync replica left out leaves as a failed one does: it counts until the
        coordinator records that it left. The list may be stale (attach calls overtake
        one another, and a new coordinator may send an older placement's list), and the
        coordinator may have recorded that replica as in sync: dropping it at once would
        let this leader acknowledge writes that a promotable replica lacks."""
        wanted = set(replicas)
        self._joining &= wanted
        left_out = sorted(self._in_sync - wanted)
        if left_out and self._acknowledging:
            self._leave(left_out)
        self._in_sync &= wanted
        newcomers = sorted(wanted - self._joining - self._in_sync - self._leaving)
        self._joining.update(newcomers)
        held = unstored() if self._acknowledging else HeldWrites()  # taken after joining: later writes reach them
        outcomes = await asyncio.gather(*(self._catch_up(name, held) for name in newcomers), return_exceptions=True)
        failed = [name for name, outcome in zip(newcomers, outcomes) if isinstance(outcome, BaseException)]
        for name in newcomers:
            if name in self._joining and name not in failed:
                self._joining.discard(name)
                self._in_sync.add(name)  # locally first: the recorded set stays a subset
                log.info(
                    "epoch %d: replica %s caught up (%d segments, %d delete logs)",
                    self.epoch,
                    name,
                    len(held.segments),
                    len(held.deletes),
                )
                if self._acknowledging:
                    self._report(self._record_in_sync(name))
        if failed:
            self._drop_joining(failed)

    async def _catch_up(self, name: str, held: HeldWrites) -> None:
        calls = [self._link.hold(name, "hold_segment", (self.epoch, batch)) for batch in held.segments.values()]
        calls += [
            self._link.hold(name, "hold_deletes", (self.epoch, seq, offsets)) for seq, offsets in held.deletes.items()
        ]
        await asyncio.gather(*calls)

    def names(self) -> list[str]:
        return sorted(self._in_sync)

    def in_sync(self) -> int:
        """Replicas in sync that a failover may promote: with acknowledging replicas,
        those the coordinator has recorded; standbys hold nothing, so any of them."""
        return len(self._recorded) if self._acknowledging else len(self._in_sync)

    def on_leader_node(self) -> int:
        """In-sync replicas not known to run on another node than the leader."""
        return sum(not self._link.apart(name) for name in self.names())

    async def segment(self, batch: pa.RecordBatch) -> bool:
        """Hand a stamped segment to every replica; True if every replica of the
        in-sync set holds it, and one of them is recorded by the coordinator and runs on
        another node: it may be acknowledged before it is stored. Raises PartitionFenced
        if a replica heard of a newer leader."""
        return await self._to_all("hold_segment", (self.epoch, batch))

    async def deletes(self, seq: int, offsets: np.ndarray) -> bool:
        return await self._to_all("hold_deletes", (self.epoch, seq, offsets))

    def release(self, offset_floor: int, seq_floor: int) -> None:
        for name in sorted(self._joining | self._in_sync):
            self._link.release(name, self.epoch, offset_floor, seq_floor)

    async def _to_all(self, method: str, args: tuple[Any, ...]) -> bool:
        targets = sorted(self._joining | self._in_sync)
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(self._link.hold(name, method, args), self._timeout_s) for name in targets),
            return_exceptions=True,
        )
        if any(isinstance(outcome, PartitionFenced) for outcome in outcomes):
            raise PartitionFenced(f"replicas of epoch {self.epoch}", self.epoch)
        failed = {name: outcome for name, outcome in zip(targets, outcomes) if isinstance(outcome, BaseException)}
        if failed:
            causes = {name: f"{type(error).__name__}: {error}"[:200] for name, error in failed.items()}
            log.warning("replicas failed a write (epoch %d): %s", self.epoch, causes)
            joining = [name for name in failed if name in self._joining]
            if joining:
                self._drop_joining(joining)
            leaving = [name for name in failed if name in self._in_sync]
            if leaving:
                self._leave(leaving)
        return not self._leaving and self._survives_the_leaders_node()

    def _survives_the_leaders_node(self) -> bool:
        """Whether a replica the coordinator may promote would outlive the leader's node:
        a copy on the same node is no second copy when the node goes."""
        return any(self._link.apart(name) for name in self._recorded)

    def _leave(self, names: list[str]) -> None:
        """In-sync replicas that failed or were left out: they count (writes wait for
        storage) until the coordinator has recorded that they left."""
        self._in_sync.difference_update(names)
        self._recorded.difference_update(names)
        self._leaving.update(names)
        self._report(self._record_lost(names))

    def _drop_joining(self, names: list[str]) -> None:
        # Never counted: the coordinator need only replace them (no answer awaited).
        self._joining.difference_update(names)
        self._report(self._tell_lost(names))

    async def _tell_lost(self, names: list[str]) -> None:
        try:
            await self._link.report_lost(names)
        except Exception:  # the coordinator's health check finds dead replicas anyway
            log.warning("could not tell the coordinator about replicas %s", names)

    async def _record_lost(self, names: list[str]) -> None:
        """Until the coordinator has recorded it, these replicas count: writes wait for storage.

        They may hold writes acknowledged before they failed and not stored yet, of which
        the leader's memory is then the only other copy: they are reported only once
        everything written so far is stored, so that no promotion is ever short of them.
        If a write failed for good instead, they are never reported: this leader stops,
        and the replicas are the copy its successor takes over with."""
        try:
            await self.stored()
        except PartitionFenced:
            return
        if await _answer(lambda: self._link.report_lost(names), f"lost replicas {names}", lambda: True):
            self._leaving.difference_update(names)
        # Refused: this leader was replaced. They stay: it acknowledges only what it stores
        # (and storage fences it).

    async def _record_in_sync(self, name: str) -> None:
        recorded = await _answer(
            lambda: self._link.report_in_sync(name), f"replica {name} in sync", lambda: name in self._in_sync
        )
        if recorded and name in self._in_sync:
            self._recorded.add(name)

    def _report(self, report: Any) -> None:
        task = asyncio.ensure_future(report)
        self._reports.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._reports.discard)


async def _answer(ask: Callable[[], Awaitable[bool]], what: str, wanted: Callable[[], bool]) -> bool:
    """The coordinator's answer to a report, asked again (with backoff) while it cannot be
    reached and the report still matters; False if it stopped mattering."""
    backoff = Backoff(*defaults.REPORT_BACKOFF_S)
    while wanted():
        try:
            return await ask()
        except Exception as error:
            log.warning("reporting %s failed (%s); retrying", what, error)
            await asyncio.sleep(backoff.next())
    return False


async def _nothing() -> None:
    return None


def detach(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A copy in this process's own memory, independent of the buffer it arrived in
    (whose owner, the leader, may die)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return pa.ipc.open_stream(sink.getvalue()).read_next_batch()
