"""Value objects users hold: Message, QueueStats, and the receipt encoding."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rayqueue.errors import InvalidReceipt

#: The receipt format; shared with the vectorized parser in rayqueue.rows.
RECEIPT_PATTERN = r"([0-9]{1,5})\.([0-9]{1,19})\.([0-9]{1,19})"
_RECEIPT = re.compile(RECEIPT_PATTERN, re.ASCII)


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery of a message. ``receipt`` is valid until the next delivery of it."""

    id: str
    body: bytes
    receipt: str
    attributes: dict[str, str] = field(default_factory=dict)
    #: Deliveries of this message so far, this one included (1 on first delivery).
    receive_count: int = 1
    #: When the partition accepted the message, in seconds since the Unix epoch.
    sent_at: float = 0.0
    key: str | None = None


@dataclass(frozen=True, slots=True)
class PartitionStats:
    partition: int
    visible: int
    in_flight: int
    stored_bytes: int
    #: Replicas holding every write acknowledged so far.
    replicas_in_sync: int = 0
    #: Of those, how many share the leader's node (the cluster had no other).
    replicas_on_leader_node: int = 0
    #: Messages stored by sends since the partition's leader started (for rates).
    sent_total: int = 0
    #: Scaling in: the partition takes no more sends and goes once drained.
    retiring: bool = False


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts that are exact once the calls made before ``stats()`` have returned."""

    name: str
    #: Messages that a receive would hand out now.
    visible: int
    #: Messages handed out and neither deleted nor visible again yet.
    in_flight: int
    #: Body bytes of the messages stored and not deleted.
    stored_bytes: int
    partitions: tuple[PartitionStats, ...] = ()

    @property
    def stored(self) -> int:
        return self.visible + self.in_flight


def encode_receipt(partition: int, offset: int, token: int) -> str:
    """A receipt names where the message lives and which delivery it belongs to:
    ``<partition>.<offset>.<token>``, all decimal (so Arrow can build and parse
    whole columns of them).

    The token is random per delivery, so a receipt cannot be guessed or reused
    after the message was delivered again.
    """
    return f"{partition}.{offset}.{token}"


def decode_receipt(receipt: object) -> tuple[int, int, int]:
    """``(partition, offset, token)``; raise InvalidReceipt if it is malformed."""
    if not isinstance(receipt, str):
        raise InvalidReceipt(repr(receipt), "a receipt is a str")
    match = _RECEIPT.fullmatch(receipt)
    if match is None:
        raise InvalidReceipt(receipt, "malformed")
    partition, offset, token = int(match[1]), int(match[2]), int(match[3])
    # Offsets are int64 and tokens are drawn from [1, 2**62).
    if offset >= 1 << 63 or not 0 < token < 1 << 62:
        raise InvalidReceipt(receipt, "malformed")
    return partition, offset, token
