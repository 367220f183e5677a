"""Between users' values and the Arrow rows that travel to partitions and back.

Everything a handle can check before a round trip is checked here, with errors
that name the offending message; partitions check again what they must enforce.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from itertools import count
from typing import Any

import pyarrow as pa

from rayqueue import defaults
from rayqueue.config import QueueConfig
from rayqueue.errors import InvalidArgument, MessageTooLarge
from rayqueue.message import Message, encode_receipt
from rayqueue.storage.format import SEND_SCHEMA

Body = bytes | bytearray | memoryview | str


class IdSource:
    """Unique message ids without a random call per message: a random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = count()

    def take(self, n: int) -> list[str]:
        start = next(self._counter)
        if n > 1:
            # Reserve the whole range at once; itertools.count has no "advance by".
            self._counter = count(start + n)
        return [f"{self._prefix}-{i:x}" for i in range(start, start + n)]


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
    columns = {name: delivery.column(name).to_pylist() for name in ("offset", "id", "body", "key", "token")}
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
            receipt=encode_receipt(partition, offset, token),
            attributes=attrs,
            receive_count=receive_count,
            sent_at=sent_at,
            key=key,
        )
        for offset, message_id, body, key, token, receive_count, sent_at, attrs in zip(
            columns["offset"], columns["id"], columns["body"], columns["key"], columns["token"], counts, sent, attribute_rows
        )
    ]
