"""Between users' values and the Arrow rows that travel to partitions and back.

Everything a handle can check before a round trip is checked here, with errors
that name the offending message; partitions check again what they must enforce.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayqueue import defaults
from rayqueue.config import QueueConfig
from rayqueue.errors import InvalidArgument, InvalidReceipt, MessageTooLarge, shown
from rayqueue.message import RECEIPT_PATTERN, Message, decode_receipt, encode_receipt
from rayqueue.schemas import SEND_SCHEMA

Body = bytes | bytearray | memoryview | str


class IdSource:
    """Unique message ids without a random call per message: a random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._next = 0
        # A handle is shared by threads: two ranges must never overlap (a retried send
        # drops ids its partition has stored, so a shared id could drop another message).
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"_prefix": self._prefix, "_next": self._next}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _reserve(self, n: int) -> int:
        with self._lock:
            start = self._next
            self._next += n
        return start

    def take(self, n: int) -> list[str]:
        start = self._reserve(n)
        return [f"{self._prefix}-{i}" for i in range(start, start + n)]

    def take_array(self, n: int) -> pa.StringArray:
        """The same ids as ``take`` would give, built as one Arrow column."""
        start = self._reserve(n)
        numbers = pa.array(np.arange(start, start + n, dtype=np.int64)).cast(pa.string())
        return pc.binary_join_element_wise(pa.scalar(self._prefix), numbers, "-")


def as_bytes(body: object, index: int) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    raise InvalidArgument(f"message {index}: body must be bytes or str, not {type(body).__name__}")


def check_text(what: str, value: object, limit: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str, not {type(value).__name__}")
    if len(value) > limit or (not value and not allow_empty):
        raise InvalidArgument(f"{what} ({value[:40]!r}, {len(value)} chars) must be 1 to {limit} characters")
    return value


def check_attributes(attributes: object) -> list[tuple[str, str]] | None:
    if attributes is None:
        return None
    if not isinstance(attributes, Mapping):
        raise InvalidArgument(f"attributes must be a dict of str to str, not {type(attributes).__name__}")
    if len(attributes) > defaults.MAX_ATTRIBUTES:
        raise InvalidArgument(f"attributes ({len(attributes)}) must number at most {defaults.MAX_ATTRIBUTES}")
    return [
        (
            check_text("attribute name", key, defaults.MAX_ATTRIBUTE_KEY_LENGTH),
            check_text(f"attribute {key!r}", value, defaults.MAX_ATTRIBUTE_VALUE_LENGTH, allow_empty=True),
        )
        for key, value in attributes.items()
    ]


def send_rows(
    config: QueueConfig,
    bodies: Sequence[Any],
    ids: list[str],
    key: str | None = None,
    attributes: list[tuple[str, str]] | None = None,
) -> pa.Table:
    """Validated rows for one send call: every body fits, the batch fits."""
    data = [as_bytes(body, index) for index, body in enumerate(bodies)]
    sizes = [len(body) for body in data]
    limit = config.max_message_bytes
    largest = max(sizes, default=0)
    if largest > limit:
        raise MessageTooLarge(config.name, largest, limit, sizes.index(largest))
    total = sum(sizes)
    if total > defaults.MAX_BATCH_BYTES:
        raise InvalidArgument(f"a batch ({total} bytes) must hold at most {defaults.MAX_BATCH_BYTES} bytes")
    n = len(data)
    columns = [
        pa.array(ids, pa.string()),
        pa.array(data, pa.binary()),
        pa.array([key] * n, pa.string()) if key is not None else pa.nulls(n, pa.string()),
        pa.array([attributes] * n, SEND_SCHEMA.field("attributes").type)
        if attributes
        else pa.nulls(n, SEND_SCHEMA.field("attributes").type),
    ]
    return pa.Table.from_arrays(columns, schema=SEND_SCHEMA)


def messages_from_delivery(partition: int, delivery: pa.Table) -> list[Message]:
    """One Message per delivered row."""
    if delivery.num_rows == 0:
        return []
    columns = {name: delivery.column(name).to_pylist() for name in ("offset", "id", "body", "key", "token", "epoch")}
    counts = delivery.column("receive_count").to_pylist()
    sent = (delivery.column("sent_at").cast(pa.int64()).to_numpy() / 1e6).tolist()
    attributes = delivery.column("attributes")
    attribute_rows = (
        [dict(pairs) if pairs else {} for pairs in attributes.to_pylist()]
        if attributes.null_count < len(attributes)
        else [{}] * delivery.num_rows
    )
    return [
        Message(
            id=message_id,
            body=body,
            receipt=encode_receipt(partition, offset, token, epoch=epoch),
            attributes=attrs,
            receive_count=receive_count,
            sent_at=sent_at,
            key=key,
        )
        for offset, message_id, body, key, token, epoch, receive_count, sent_at, attrs in zip(
            columns["offset"],
            columns["id"],
            columns["body"],
            columns["key"],
            columns["token"],
            columns["epoch"],
            counts,
            sent,
            attribute_rows,
        )
    ]


# ------------------------------------------------------------- the Arrow bulk path

ArrowBodies: TypeAlias = pa.Array | pa.ChunkedArray | pa.Table
_BINARY_TYPES = (pa.binary(), pa.large_binary(), pa.string(), pa.large_string())


def is_arrow(value: object) -> bool:
    return isinstance(value, (pa.Array, pa.ChunkedArray, pa.Table, pa.RecordBatch))


def send_rows_from_arrow(config: QueueConfig, data: Any, ids: pa.Array) -> pa.Table:
    """Rows for one send from Arrow data, checked column-wise: a binary or string
    array of bodies, or a table with a ``body`` column and optional ``key`` (string)
    and ``attributes`` (map of string to string) columns."""
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    table = data if isinstance(data, pa.Table) else pa.table({"body": data})
    if "body" not in table.column_names:
        raise InvalidArgument(f"an Arrow table to send needs a 'body' column, not only {table.column_names}")
    body = _column(table, "body", _BINARY_TYPES, pa.binary())
    if body.null_count:
        raise InvalidArgument(f"body {pc.index(pc.is_null(body), True).as_py()} is null; bodies are bytes or str")
    sizes = pc.binary_length(body)
    largest = pc.max(sizes).as_py() or 0
    if largest > config.max_message_bytes:
        index = pc.index(sizes, largest).as_py()
        raise MessageTooLarge(config.name, largest, config.max_message_bytes, index)
    total = pc.sum(sizes).as_py() or 0
    if total > defaults.MAX_BATCH_BYTES:
        raise InvalidArgument(f"a batch ({total} bytes) must hold at most {defaults.MAX_BATCH_BYTES} bytes")
    n = table.num_rows
    attributes_type = SEND_SCHEMA.field("attributes").type
    key = _column(table, "key", (pa.string(), pa.large_string()), pa.string()) if "key" in table.column_names else None
    attributes = (
        _column(table, "attributes", (attributes_type,), attributes_type)
        if "attributes" in table.column_names
        else None
    )
    columns = [
        ids,
        body,
        key if key is not None else pa.nulls(n, pa.string()),
        attributes if attributes is not None else pa.nulls(n, attributes_type),
    ]
    return pa.Table.from_arrays(columns, schema=SEND_SCHEMA)


def _column(table: pa.Table, name: str, accepted: tuple[pa.DataType, ...], target: pa.DataType) -> pa.ChunkedArray:
    column = table.column(name)
    if column.type not in accepted:
        raise InvalidArgument(
            f"column {name!r} has type {column.type}; it must be one of {', '.join(map(str, accepted))}"
        )
    return column.cast(target)


def delivery_table(partition: int, delivery: pa.Table) -> pa.Table:
    """The user's view of a delivery, built column-wise: id, body, receipt,
    receive_count, sent_at, attributes, key."""
    parts = [delivery.column(name).cast(pa.string()) for name in ("epoch", "offset", "token")]
    receipts = pc.binary_join_element_wise(pa.scalar(str(partition)), *parts, ".")
    return pa.table(
        {
            "id": delivery.column("id"),
            "body": delivery.column("body"),
            "receipt": receipts,
            "receive_count": delivery.column("receive_count"),
            "sent_at": delivery.column("sent_at"),
            "attributes": delivery.column("attributes"),
            "key": delivery.column("key"),
        }
    )


class ReceiptColumns(NamedTuple):
    """A column of receipts taken apart: one int64 array per part."""

    partitions: np.ndarray
    epochs: np.ndarray
    offsets: np.ndarray
    tokens: np.ndarray


def receipt_column(receipts: object) -> pa.Array | pa.ChunkedArray:
    """The receipts a user passed to a delete, as an Arrow string column: a sequence
    of str, or an Arrow column already. Raise InvalidReceipt naming the first bad one."""
    if isinstance(receipts, (pa.Array, pa.ChunkedArray)):
        return receipts
    if isinstance(receipts, str) or not isinstance(receipts, Sequence):
        raise InvalidArgument(
            f"delete_batch takes a sequence or Arrow column of receipts, not {type(receipts).__name__}"
        )
    for receipt in receipts:
        if not isinstance(receipt, str):
            raise InvalidReceipt(shown(repr(receipt)), "a receipt is a str")
    try:
        return pa.array(receipts, pa.string())
    except UnicodeEncodeError:  # a lone surrogate cannot be UTF-8: no receipt holds one
        bad = next(receipt for receipt in receipts if not _encodable(receipt))
        raise InvalidReceipt(shown(bad), "malformed") from None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_receipts(receipts: pa.Array | pa.ChunkedArray) -> ReceiptColumns:
    """The parts of a column of receipts, parsed column-wise; raise InvalidReceipt
    naming the first malformed one."""
    if isinstance(receipts, pa.ChunkedArray):
        receipts = receipts.combine_chunks()
    if receipts.type not in (pa.string(), pa.large_string()):
        raise InvalidReceipt(str(receipts.type), "receipts are strings")
    well_formed = pc.match_substring_regex(receipts, f"^{RECEIPT_PATTERN}$")
    if receipts.null_count or not pc.all(well_formed).as_py():
        _first_bad(receipts, well_formed)
    try:
        parts = pc.list_flatten(pc.split_pattern(receipts, ".")).cast(pa.uint64())
    except pa.ArrowInvalid:  # a number too large for 64 bits
        _first_bad(receipts, pa.array([False] * len(receipts)))
    numbers = parts.to_numpy().reshape(-1, 4)
    partitions, epochs, offsets, tokens = numbers[:, 0], numbers[:, 1], numbers[:, 2], numbers[:, 3]
    bad = (offsets >= 1 << 63) | (tokens == 0) | (tokens >= 1 << 62)
    if bad.any():
        raise InvalidReceipt(receipts[int(np.flatnonzero(bad)[0])].as_py(), "malformed")
    return ReceiptColumns(*(column.astype(np.int64) for column in (partitions, epochs, offsets, tokens)))


def _first_bad(receipts: pa.Array, well_formed: pa.Array) -> None:
    for index, ok in enumerate(well_formed.to_pylist()):
        if not ok:
            decode_receipt(receipts[index].as_py())  # raises, with the reason
    for receipt in receipts.to_pylist():
        decode_receipt(receipt)
    raise InvalidReceipt(shown(repr(receipts)), "malformed")
