"""Between users' values and the Arrow rows that travel to partitions and back.

Everything a handle can check before a round trip is checked here, with errors
that name the offending message; partitions check again what they must enforce.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayqueue import defaults
from rayqueue.config import QueueConfig
from rayqueue.errors import InvalidArgument, InvalidReceipt, MessageTooLarge, shown
from rayqueue.message import RECEIPT_PATTERN, Message, decode_receipt, encode_receipt
from rayqueue.schemas import SEND_SCHEMA

B = TypeVar("B")

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
        try:
            return body.encode()
        except UnicodeEncodeError as error:
            raise InvalidArgument(f"message {index}: body {_not_utf8(body, error)}") from None
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    raise InvalidArgument(f"message {index}: body must be bytes or str, not {type(body).__name__}")


def batches(bodies: Iterable[B], most: int) -> Iterator[list[B]]:
    """Runs of at most ``most`` bodies and ``defaults.MAX_BATCH_BYTES`` bytes (text counted
    as UTF-8), in order: each one a send_batch call may take."""
    batch: list[B] = []
    size = 0
    for body in bodies:
        length = len(body.encode()) if isinstance(body, str) else len(body) if isinstance(body, bytes) else 0
        if batch and (len(batch) == most or size + length > defaults.MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(body)
        size += length
    if batch:
        yield batch


def check_text(what: str, value: object, limit: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str, not {type(value).__name__}")
    if len(value) > limit or (not value and not allow_empty):
        wanted = f"at most {limit}" if allow_empty else f"1 to {limit}"
        raise InvalidArgument(f"{what} ({shown(repr(value))}, {len(value)} chars) must be {wanted} characters")
    try:
        value.encode()  # short (checked above): cheap, and Arrow would fail on it later with a raw error
    except UnicodeEncodeError as error:
        raise InvalidArgument(f"{what} {_not_utf8(value, error)}") from None
    return value


def _not_utf8(text: str, error: UnicodeEncodeError) -> str:
    """Why ``text`` cannot be sent: the end of an error message that quotes it."""
    return (
        f"({shown(repr(text))}) holds {text[error.start]!r} at {error.start}, a lone surrogate, "
        "which UTF-8 cannot encode"
    )


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
    and ``attributes`` (map of string to string) columns.

    Keys and attributes meet the same limits as on ``send``; text that is not valid
    UTF-8 is refused (stored, it would fail every receive that includes it). Errors
    name the first offending row."""
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    table = data if isinstance(data, pa.Table) else pa.table({"body": data})
    body = _bodies(config, table)
    n = table.num_rows
    key = _keys(table)
    attributes = _attributes(table)
    columns = [
        ids,
        body,
        key if key is not None else pa.nulls(n, pa.string()),
        attributes if attributes is not None else pa.nulls(n, ATTRIBUTES_TYPE),
    ]
    return pa.Table.from_arrays(columns, schema=SEND_SCHEMA)


ATTRIBUTES_TYPE = SEND_SCHEMA.field("attributes").type
#: A map's entries as a list: Arrow's list kernels (lengths, flatten, parents) take no maps.
_ENTRIES_TYPE = pa.list_(pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())]))
#: What each text type is as bytes: a column that validates as bytes but not as text is
#: well built, with text that is not UTF-8.
_AS_BYTES = {
    pa.string(): pa.binary(),
    pa.large_string(): pa.large_binary(),
    ATTRIBUTES_TYPE: pa.map_(pa.binary(), pa.binary()),
}


def _bodies(config: QueueConfig, table: pa.Table) -> pa.ChunkedArray:
    column = _only_column(table, "body", _BINARY_TYPES)
    if column is None:
        raise InvalidArgument(f"an Arrow table to send needs a 'body' column, not only {table.column_names}")
    _check_built("body", column)
    if column.null_count:
        raise InvalidArgument(f"body {_first(pc.is_null(column))} is null; bodies are bytes or str")
    # Sizes on the column as given, before any cast: a large_binary column past 2 GiB
    # is refused here as too large, not by the cast with a raw ArrowInvalid.
    sizes = pc.binary_length(column)
    largest = pc.max(sizes).as_py() or 0
    if largest > config.max_message_bytes:
        index = pc.index(sizes, largest).as_py()
        raise MessageTooLarge(config.name, largest, config.max_message_bytes, index)
    total = pc.sum(sizes).as_py() or 0
    if total > defaults.MAX_BATCH_BYTES:
        raise InvalidArgument(f"a batch ({total} bytes) must hold at most {defaults.MAX_BATCH_BYTES} bytes")
    start = 0
    for chunk in column.chunks:
        if not _well_formed("body", chunk):
            index = start + _first_malformed(chunk)
            raise InvalidArgument(f"body {index} is in a str column but is not valid UTF-8; send it as binary")
        start += len(chunk)
    return column.cast(pa.binary())


def _keys(table: pa.Table) -> pa.Array | None:
    column = _only_column(table, "key", (pa.string(), pa.large_string()))
    if column is None:
        return None
    keys = column.combine_chunks()
    _check_strings("key", keys, None, defaults.MAX_KEY_LENGTH, allow_empty=False, allow_null=True)
    return keys.cast(pa.string())


def _attributes(table: pa.Table) -> pa.Array | None:
    column = _only_column(table, "attributes", (ATTRIBUTES_TYPE,))
    if column is None:
        return None
    attributes = column.combine_chunks()
    _well_formed("attributes", attributes)  # the kernels below must not run on a malformed map
    entries = attributes.cast(_ENTRIES_TYPE)
    counts = pc.list_value_length(entries)
    too_many = _first(pc.greater(counts, defaults.MAX_ATTRIBUTES))
    if too_many is not None:
        raise InvalidArgument(
            f"attributes of message {too_many} ({counts[too_many].as_py()}) "
            f"must number at most {defaults.MAX_ATTRIBUTES}"
        )
    pairs = pc.list_flatten(entries)
    rows = pc.list_parent_indices(entries).to_numpy()
    limits = {
        "name": ("key", defaults.MAX_ATTRIBUTE_KEY_LENGTH),
        "value": ("value", defaults.MAX_ATTRIBUTE_VALUE_LENGTH),
    }
    for what, (field, limit) in limits.items():
        strings = pc.struct_field(pairs, field)
        _check_strings(f"attribute {what}", strings, rows, limit, allow_empty=what == "value", allow_null=False)
    return attributes


def _only_column(table: pa.Table, name: str, accepted: tuple[pa.DataType, ...]) -> pa.ChunkedArray | None:
    """The table's column ``name`` (None if it has none), of one of the ``accepted`` types."""
    copies = table.column_names.count(name)
    if copies > 1:
        raise InvalidArgument(f"the table has {copies} columns named {name!r}; a send takes one")
    if not copies:
        return None
    column = table.column(name)
    if column.type not in accepted:
        raise InvalidArgument(
            f"column {name!r} has type {column.type}; it must be one of {', '.join(map(str, accepted))}"
        )
    return column


def _check_strings(
    what: str, strings: pa.Array, rows: np.ndarray | None, limit: int, *, allow_empty: bool, allow_null: bool
) -> None:
    """Refuse text ``check_text`` would refuse on the single-message path, naming the
    message: ``rows`` gives each string's message (None: the string's own index)."""
    _check_utf8(what, strings, rows)
    if not allow_null and strings.null_count:
        raise InvalidArgument(f"{what} of message {_row(rows, _first(pc.is_null(strings)))} is null; it must be a str")
    lengths = pc.utf8_length(strings)
    bad = pc.greater(lengths, limit)
    if not allow_empty:
        bad = pc.or_(bad, pc.equal(lengths, 0))
    index = _first(bad)
    if index is not None:
        value, length = strings[index].as_py(), lengths[index].as_py()
        wanted = f"at most {limit}" if allow_empty else f"1 to {limit}"
        raise InvalidArgument(
            f"{what} of message {_row(rows, index)} ({shown(repr(value))}, {length} chars) must be {wanted} characters"
        )


def _check_utf8(what: str, strings: pa.Array, rows: np.ndarray | None) -> None:
    if not _well_formed(what, strings):
        raise InvalidArgument(f"{what} of message {_row(rows, _first_malformed(strings))} is not valid UTF-8")


def _check_built(what: str, column: pa.ChunkedArray) -> None:
    """Arrow's cheap validation (buffers as large as the offsets say), before any kernel
    reads the column; the full one, which reads every value, comes after the limits."""
    try:
        column.validate()
    except pa.ArrowInvalid as error:
        raise InvalidArgument(f"the {what} column is malformed Arrow data: {shown(str(error))}") from None


def _well_formed(what: str, array: pa.Array) -> bool:
    """Whether ``array`` passes Arrow's full validation. One that fails as text but
    passes as bytes is well built with text that is not UTF-8 (False); one that fails
    either way is refused here, since Arrow's kernels must not run on it."""
    try:
        array.validate(full=True)
        return True
    except pa.ArrowInvalid:
        pass
    try:
        array.cast(_AS_BYTES.get(array.type, array.type)).validate(full=True)
    except pa.ArrowInvalid as error:
        raise InvalidArgument(f"the {what} column is malformed Arrow data: {shown(str(error))}") from None
    return False


def _first_malformed(array: pa.Array) -> int:
    """Index of the first value of ``array`` that fails full validation: halves the
    range that holds it until one value is left (each step validates one slice)."""
    low, high = 0, len(array)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            array.slice(low, middle - low).validate(full=True)
            low = middle
        except pa.ArrowInvalid:
            high = middle
    return low


def _first(mask: pa.Array | pa.ChunkedArray) -> int | None:
    """Index of the first true value of a boolean column, or None."""
    index: int = pc.index(mask, True).as_py()
    return None if index < 0 else index


def _row(rows: np.ndarray | None, index: int | None) -> int:
    assert index is not None  # a caller asks only about a value it found
    return index if rows is None else int(rows[index])


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
