"""``Queue``: a handle on one queue's messages.

A ``Queue`` is a small picklable handle: pass it to Ray tasks and actors and it
works there as in the driver. It talks straight to the partition actors; the
coordinator is asked only for the route, when a handle is made and after a
partition failed. Each operation is written once as a plan (see
``rayqueue.client.plan``) and offered blocking and awaitable (``*_async``).
"""

from __future__ import annotations

import itertools
import random
import time
import zlib
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayqueue import defaults
from rayqueue.client import plan as steps
from rayqueue.client.consumer import BufferedConsumer
from rayqueue.client.plan import Plan, Step, Target
from rayqueue.client.rows import (
    ArrowBodies,
    Body,
    IdSource,
    check_attributes,
    check_text,
    delivery_table,
    is_arrow,
    messages_from_delivery,
    parse_receipts,
    receipt_column,
    send_rows,
    send_rows_from_arrow,
)
from rayqueue.config import QueueConfig
from rayqueue.errors import InvalidArgument, InvalidReceipt, PartitionRetired, PartitionUnavailable, QueueFull
from rayqueue.message import Message, QueueStats, Receipt, decode_receipt
from rayqueue.routes import Route
from rayqueue.schemas import DELIVERY_SCHEMA
from rayqueue.transport import drivers
from rayqueue.transport.direct import is_bulky
from rayqueue.validation import check, count, number


class Queue:
    """A handle on one queue. Cheap to copy and to pickle."""

    def __init__(self, name: str, coordinator: Any, route: Route) -> None:
        self._target = Target(name, coordinator, route)
        self._ids = IdSource()
        # Start each handle at a random partition so many producers spread out.
        self._round_robin = itertools.count(random.randrange(1 << 16))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Queue, (self._target.name, self._target.coordinator, self._target.route))

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, partitions={self._count})"

    @property
    def _count(self) -> int:
        """Partitions the queue has now (scaling may change it; config says where it started)."""
        return len(self._target.route.partitions)

    @property
    def name(self) -> str:
        return self._target.name

    @property
    def config(self) -> QueueConfig:
        return self._target.route.config

    # ----------------------------------------------------------- the operations

    def send(
        self,
        body: Body,
        *,
        key: str | None = None,
        attributes: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> str:
        """Send one message; return its id once it is stored.

        Messages with the same ``key`` go to the same partition, in order. A
        ``message_id`` sent again within five minutes is stored only once.
        """
        return drivers.run(self._target, self._send_plan(body, key, attributes, message_id))

    async def send_async(
        self,
        body: Body,
        *,
        key: str | None = None,
        attributes: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> str:
        return await drivers.run_async(self._target, self._send_plan(body, key, attributes, message_id))

    def send_batch(self, bodies: Sequence[Body] | ArrowBodies) -> Any:
        """Send many messages in one call, all or nothing; return their ids once stored.

        ``bodies`` is a sequence of bytes or str (ids come back as a list), or Arrow
        data (ids come back as an Arrow string array): a binary or string array, or
        a table with a ``body`` column and optional ``key`` and ``attributes``
        columns. Rows with keys go to their keys' partitions: all or nothing then
        holds per partition.
        """
        return drivers.run(self._target, self._send_batch_plan(bodies))

    async def send_batch_async(self, bodies: Sequence[Body] | ArrowBodies) -> Any:
        return await drivers.run_async(self._target, self._send_batch_plan(bodies))

    def receive(
        self, max_messages: int = 1, *, wait_s: float = 0.0, visibility_timeout_s: float | None = None
    ) -> list[Message]:
        """Up to ``max_messages`` visible messages, hidden from others until deleted or
        until the visibility timeout runs out. Waits up to ``wait_s`` for the first one.

        Over several partitions, one that fails is skipped, not waited for: the
        messages already taken from others come back at once (their visibility
        timeout runs). Only when the others had nothing does it wait for the failed
        ones, one after the other and holding nothing, as a single-partition receive
        does (``PartitionUnavailable`` once one has failed for
        ``defaults.PARTITION_RETRY_S``): it answers empty only when all answered."""
        return drivers.run(self._target, self._messages(self._receive_plan(max_messages, wait_s, visibility_timeout_s)))

    async def receive_async(
        self, max_messages: int = 1, *, wait_s: float = 0.0, visibility_timeout_s: float | None = None
    ) -> list[Message]:
        plan = self._messages(self._receive_plan(max_messages, wait_s, visibility_timeout_s))
        return await drivers.run_async(self._target, plan)

    def receive_batch(
        self, max_messages: int = 1000, *, wait_s: float = 0.0, visibility_timeout_s: float | None = None
    ) -> pa.Table:
        """Like ``receive``, as one Arrow table with no per-message Python objects:
        columns id, body, receipt, receive_count, sent_at, attributes, key. Pass its
        ``receipt`` column to ``delete_batch``."""
        return drivers.run(self._target, self._table(self._receive_plan(max_messages, wait_s, visibility_timeout_s)))

    async def receive_batch_async(
        self, max_messages: int = 1000, *, wait_s: float = 0.0, visibility_timeout_s: float | None = None
    ) -> pa.Table:
        plan = self._table(self._receive_plan(max_messages, wait_s, visibility_timeout_s))
        return await drivers.run_async(self._target, plan)

    def delete(self, receipt: str) -> None:
        """Delete a received message for good; return once the delete is stored."""
        drivers.run(self._target, self._delete_plan([receipt]))

    async def delete_async(self, receipt: str) -> None:
        await drivers.run_async(self._target, self._delete_plan([receipt]))

    def delete_batch(self, receipts: Sequence[str] | pa.Array | pa.ChunkedArray) -> None:
        """Delete many messages (receipts as a list, or ``receive_batch``'s receipt column);
        if any receipt is invalid, none of its partition's are deleted."""
        drivers.run(self._target, self._delete_plan(receipts))

    async def delete_batch_async(self, receipts: Sequence[str] | pa.Array | pa.ChunkedArray) -> None:
        await drivers.run_async(self._target, self._delete_plan(receipts))

    def change_visibility(self, receipt: str, timeout_s: float) -> None:
        """Make an in-flight message visible again ``timeout_s`` from now (0: at once)."""
        drivers.run(self._target, self._visibility_plan(receipt, timeout_s))

    async def change_visibility_async(self, receipt: str, timeout_s: float) -> None:
        await drivers.run_async(self._target, self._visibility_plan(receipt, timeout_s))

    def stats(self) -> QueueStats:
        return drivers.run(self._target, self._stats_plan())

    def consumer(
        self,
        *,
        prefetch: int = 10,
        delete_batch: int = 10,
        flush_interval_s: float = 0.1,
        visibility_timeout_s: float | None = None,
    ) -> BufferedConsumer:
        """An opt-in consumer that prefetches ``prefetch`` messages per call and sends
        deletes in batches; buffered deletes are durable once flushed (see
        ``rayqueue.client.consumer``). Use it in a ``with`` block."""
        return BufferedConsumer(
            self,
            prefetch=prefetch,
            delete_batch=delete_batch,
            flush_interval_s=flush_interval_s,
            visibility_timeout_s=visibility_timeout_s,
        )

    async def stats_async(self) -> QueueStats:
        return await drivers.run_async(self._target, self._stats_plan())

    # ------------------------------------------------------------------- plans

    def _send_plan(
        self, body: Body, key: str | None, attributes: Mapping[str, str] | None, message_id: str | None
    ) -> Plan[str]:
        if key is not None:
            check_text("key", key, defaults.MAX_KEY_LENGTH)
        if message_id is not None:
            check_text("message_id", message_id, defaults.MAX_MESSAGE_ID_LENGTH)
        ids = [message_id] if message_id is not None else self._ids.take(1)
        rows = send_rows(self.config, [body], ids, key, check_attributes(attributes))
        # A key pins a partition (order per key); so does a message id (a retry must meet its first try).
        pin = key if key is not None else message_id
        yield from self._store(rows, pin, dedup=message_id is not None)
        return ids[0]

    def _send_batch_plan(self, bodies: Sequence[Body] | ArrowBodies) -> Plan[Any]:
        if is_arrow(bodies):
            return (yield from self._send_arrow_plan(bodies))
        if isinstance(bodies, (bytes, str)) or not isinstance(bodies, Sequence):
            raise InvalidArgument(f"send_batch takes a sequence of bodies or Arrow data, not {type(bodies).__name__}")
        _check_batch(len(bodies))
        if not bodies:
            return []
        ids = self._ids.take(len(bodies))
        yield from self._store(send_rows(self.config, bodies, ids), None, dedup=False)
        return ids

    def _send_arrow_plan(self, data: ArrowBodies) -> Plan[pa.Array]:
        _check_batch(len(data))
        ids = self._ids.take_array(len(data))
        if not len(data):
            return ids
        rows = send_rows_from_arrow(self.config, data, ids)
        keys = rows.column("key")
        if keys.null_count == len(keys) or self._count == 1:
            yield from self._store(rows, None, dedup=False)
            return ids
        # Rows with a key go to their key's partition (one call each, run together);
        # rows without one go to the next partition in turn.
        where = self._partitions_of(keys)
        parts = {int(p): rows.filter(pa.array(where == p)) for p in np.unique(where)}
        yield from steps.gather(
            [steps.send(p, part, dedup=False, bulky=is_bulky(part.nbytes)) for p, part in parts.items()]
        )
        return ids

    def _partitions_of(self, keys: pa.ChunkedArray) -> np.ndarray:
        """Each row's partition: its key's, or the round robin's for rows without one.
        Hashes each distinct key once, not each row."""
        keyed = self.config.keyed_partitions
        distinct = pc.unique(keys).drop_null()
        hashed = pa.array([zlib.crc32(key.encode()) % keyed for key in distinct.to_pylist()], pa.int64())
        sendable = self._target.route.sendable()
        unkeyed = sendable[next(self._round_robin) % len(sendable)]
        return pc.take(hashed, pc.index_in(keys, distinct)).fill_null(unkeyed).to_numpy()

    def _store(self, rows: Any, pin: str | None, dedup: bool) -> Plan[None]:
        if pin is not None:
            # Over the partitions that never retire: a key's messages stay in one, in order.
            order = [zlib.crc32(pin.encode()) % self.config.keyed_partitions]
        else:
            sendable = self._target.route.sendable()
            start = next(self._round_robin)
            order = [sendable[(start + i) % len(sendable)] for i in range(len(sendable))]
        # A repeat after a partition failure must not store the rows twice.
        stored = 0
        for partition in order:
            try:
                yield from steps.gather([steps.send(partition, rows, dedup=dedup, bulky=is_bulky(rows.nbytes))])
                return
            except QueueFull as full:
                stored += full.stored  # this partition's share is used up; try the next
            except PartitionRetired:
                continue  # it stored nothing: the next one takes it (the route refreshes soon)
        raise QueueFull(self.name, self.config.max_messages, stored, rows.num_rows)

    def _receive_plan(
        self, max_messages: int, wait_s: float, visibility_s: float | None
    ) -> Plan[list[tuple[int, pa.Table]]]:
        """Deliveries as ``(partition, delivery)`` pairs; the callers shape them."""
        check("max_messages", max_messages, count(1, defaults.MAX_BATCH_MESSAGES))
        check("wait_s", wait_s, number(0.0, defaults.MAX_WAIT_S))
        if visibility_s is not None:
            check("visibility_timeout_s", visibility_s, number(0.0, defaults.MAX_VISIBILITY_TIMEOUT_S))
        partitions = self._count
        if partitions == 1:
            (delivery,) = yield from steps.gather([steps.receive(0, max_messages, wait_s, visibility_s)])
            return [(0, delivery)]
        start = next(self._round_robin)
        order = [(start + i) % partitions for i in range(partitions)]
        deliveries, failed = yield from self._receive_each(order, max_messages, visibility_s)
        if deliveries or (wait_s <= 0 and not failed):
            return deliveries
        if wait_s <= 0:
            return (yield from self._wait_for_failed(failed, max_messages, visibility_s))
        return (yield from self._long_poll(max_messages, wait_s, visibility_s))

    def _wait_for_failed(
        self, failed: list[int], max_messages: int, visibility_s: float | None
    ) -> Plan[list[tuple[int, pa.Table]]]:
        """Nothing is held, and these partitions failed: any of them may hold the only
        messages left, so "empty" would be a lie (a drain loop would stop early). Wait
        for each in turn, as a single-partition receive does, until one delivers; only
        if every one of them answers empty is the answer empty. One whose retries run
        out raises ``PartitionUnavailable`` at once: the wait stays bounded."""
        for partition in failed:
            try:
                (delivery,) = yield from steps.gather([steps.receive(partition, max_messages, 0.0, visibility_s)])
            except PartitionRetired:
                continue  # drained and gone since: it holds nothing
            if delivery.num_rows:
                return [(partition, delivery)]
        return []

    def _receive_each(
        self, order: list[int], max_messages: int, visibility_s: float | None
    ) -> Generator[Step, Any, tuple[list[tuple[int, pa.Table]], list[int]]]:
        """Receive from the partitions in ``order`` one after the other, up to
        ``max_messages`` in all; return the non-empty deliveries and the partitions
        that failed.

        Messages taken from one partition are in flight (their visibility timeout
        runs) until the caller has them, so a failing partition is skipped, not
        waited for: its receive is a ``once`` call (reported to the coordinator,
        which heals the route, but not retried). Skipping it loses nothing: what it
        holds stays there for the next receive.
        """
        deliveries: list[tuple[int, pa.Table]] = []
        failed: list[int] = []
        received = 0
        for partition in order:
            call = steps.receive(partition, max_messages - received, 0.0, visibility_s, once=True)
            try:
                (delivery,) = yield from steps.gather([call])
            except PartitionRetired:
                continue  # drained and gone: nothing to receive there
            except PartitionUnavailable:
                failed.append(partition)
                continue
            if delivery.num_rows:
                deliveries.append((partition, delivery))
                received += delivery.num_rows
                if received == max_messages:
                    break
        return deliveries, failed

    def _long_poll(
        self, max_messages: int, wait_s: float, visibility_s: float | None
    ) -> Plan[list[tuple[int, pa.Table]]]:
        # Ask every partition to tell us when it has something, then take from the first that does.
        give_up = time.monotonic() + wait_s
        while (remaining := give_up - time.monotonic()) > 0:
            probes = [steps.wait_visible(p, remaining) for p in range(self._count)]
            first = yield from steps.first(probes, remaining)
            if first is None or not first[1]:
                continue
            partition = first[0]
            try:
                (delivery,) = yield from steps.gather([steps.receive(partition, max_messages, 0.0, visibility_s)])
            except PartitionRetired:
                continue
            if delivery.num_rows:
                return [(partition, delivery)]
        return []

    def _messages(self, plan: Plan[list[tuple[int, pa.Table]]]) -> Plan[list[Message]]:
        deliveries = yield from plan
        return [
            message for partition, delivery in deliveries for message in messages_from_delivery(partition, delivery)
        ]

    def _table(self, plan: Plan[list[tuple[int, pa.Table]]]) -> Plan[pa.Table]:
        deliveries = yield from plan
        tables = [delivery_table(partition, delivery) for partition, delivery in deliveries]
        return pa.concat_tables(tables) if tables else delivery_table(0, DELIVERY_SCHEMA.empty_table())

    def _delete_plan(self, receipts: Sequence[str] | pa.Array | pa.ChunkedArray) -> Plan[None]:
        column = receipt_column(receipts)
        _check_batch(len(column))
        if not len(column):
            return
        # The epoch is not sent: the partition checks each receipt's token, which a
        # leader change voids anyway (the partition's call arguments stay as they were).
        parsed = parse_receipts(column)
        partitions = parsed.partitions
        if partitions.max() >= self._count:
            bad = int(np.flatnonzero(partitions >= self._count)[0])
            raise InvalidReceipt(str(column[bad]), f"queue {self.name!r} has no partition {partitions[bad]}")
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        deletes = []
        for partition in np.unique(partitions):
            mine = partitions == partition
            deletes.append(
                steps.delete(int(partition), parsed.offsets[mine], parsed.tokens[mine], column.filter(pa.array(mine)))
            )
        yield from steps.gather(deletes)

    def _visibility_plan(self, receipt: str, timeout_s: float) -> Plan[None]:
        check("timeout_s", timeout_s, number(0.0, defaults.MAX_VISIBILITY_TIMEOUT_S))
        parts = self._decode(receipt)
        yield from steps.gather(
            [steps.change_visibility(parts.partition, parts.offset, parts.token, receipt, float(timeout_s))]
        )

    def _stats_plan(self) -> Plan[QueueStats]:
        while True:
            try:
                parts = yield from steps.gather([steps.stats(partition) for partition in range(self._count)])
                break
            except PartitionRetired:
                continue  # scaling in removed one meanwhile: ask the partitions there are now
        return QueueStats(
            name=self.name,
            visible=sum(p.visible for p in parts),
            in_flight=sum(p.in_flight for p in parts),
            stored_bytes=sum(p.stored_bytes for p in parts),
            partitions=tuple(parts),
        )

    def _decode(self, receipt: str) -> Receipt:
        parts = decode_receipt(receipt)
        if parts.partition >= self._count:
            raise InvalidReceipt(receipt, f"queue {self.name!r} has no partition {parts.partition}")
        return parts


def _check_batch(messages: int) -> None:
    if messages > defaults.MAX_BATCH_MESSAGES:
        raise InvalidArgument(f"a batch ({messages} messages) must hold at most {defaults.MAX_BATCH_MESSAGES} messages")
