"""Value objects users hold: Message, QueueStats, and the receipt encoding."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from rayqueue.errors import InvalidReceipt, shown

#: The receipt format ``<partition>.<epoch>.<offset>.<token>``; shared with the
#: vectorized parser in rayqueue.client.rows.
RECEIPT_PATTERN = r"([0-9]{1,5})\.([0-9]{1,10})\.([0-9]{1,19})\.([0-9]{1,19})"
_RECEIPT = re.compile(RECEIPT_PATTERN, re.ASCII)
#: Receipts handed out before receipts carried the epoch (``<partition>.<offset>.<token>``).
_EPOCHLESS = re.compile(r"[0-9]{1,5}\.[0-9]{1,19}\.[0-9]{1,19}", re.ASCII)


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

    @property
    def epoch(self) -> int:
        """The epoch of the partition leader that served this delivery (from the receipt).

        A leader change makes every delivery of an older epoch void, so this tells
        which leader a delivery came from when a failover is being looked into.
        """
        return decode_receipt(self.receipt).epoch


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


class Receipt(NamedTuple):
    """The parts of a receipt, in the order they are written."""

    partition: int
    #: The epoch of the leader that served the delivery.
    epoch: int
    offset: int
    #: Random per delivery: a receipt cannot be guessed or reused after a redelivery.
    token: int


def encode_receipt(partition: int, offset: int, token: int, *, epoch: int = 0) -> str:
    """A receipt names where the message lives, which leader served it and which
    delivery it belongs to: ``<partition>.<epoch>.<offset>.<token>``, all decimal
    (so Arrow can build and parse whole columns of them).

    Epochs start at 1 once a leader claims its partition; 0 names no leader (a
    log that was never taken over, as in unit tests of the log alone).
    """
    return f"{partition}.{epoch}.{offset}.{token}"


def decode_receipt(receipt: object) -> Receipt:
    """The parts of ``receipt``; raise InvalidReceipt if it is malformed.

    A receipt without an epoch (``<partition>.<offset>.<token>``, from before
    receipts carried one) is refused: it was served by a leader that no longer
    runs after the upgrade's restart, and a restarted leader forgets every
    delivery (its messages are visible again), so InvalidReceipt is the truth.
    """
    if not isinstance(receipt, str):
        raise InvalidReceipt(shown(repr(receipt)), "a receipt is a str")
    match = _RECEIPT.fullmatch(receipt)
    if match is None:
        if _EPOCHLESS.fullmatch(receipt):
            raise InvalidReceipt(receipt, "it has no epoch: it comes from a leader that ran before an upgrade")
        raise InvalidReceipt(shown(receipt), "malformed")
    parts = Receipt(int(match[1]), int(match[2]), int(match[3]), int(match[4]))
    # Offsets are int64 and tokens are drawn from [1, 2**62).
    if parts.offset >= 1 << 63 or not 0 < parts.token < 1 << 62:
        raise InvalidReceipt(receipt, "malformed")
    return parts
