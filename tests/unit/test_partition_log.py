"""PartitionLog: delivery, visibility, receipts, deletes, quota, retention and recovery.

Time is driven by hand: every call takes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

from rayqueue.client.rows import IdSource, send_rows
from rayqueue.config import QueueConfig
from rayqueue.errors import InvalidReceipt, QueueFull
from rayqueue.message import encode_receipt
from rayqueue.partition.log import LogStats, PartitionLog
from rayqueue.storage import format

T0 = 1_700_000_000.0
VISIBILITY = 30.0
RETENTION = 3600.0
DEDUP_WINDOW = 300.0

CONFIG = QueueConfig.build(name="orders", max_messages=1000, max_message_bytes=1024)
IDS = IdSource()


@dataclass(frozen=True)
class Delivery:
    body: bytes
    offset: int
    token: int
    receive_count: int

    @property
    def receipt(self) -> str:
        return encode_receipt(0, self.offset, self.token)


def new_log(quota: int = 1000, retention_s: float = RETENTION, dedup_window_s: float = DEDUP_WINDOW) -> PartitionLog:
    return PartitionLog(0, quota=quota, retention_s=retention_s, dedup_window_s=dedup_window_s, seed=7)


def make_rows(bodies: list[bytes], ids: list[str] | None = None) -> pa.Table:
    return send_rows(CONFIG, bodies, ids if ids is not None else IDS.take(len(bodies)))


def send(log: PartitionLog, bodies: list[bytes], now: float = T0) -> pa.RecordBatch:
    """Reserve, stamp and publish as a partition does once the segment is stored."""
    rows = make_rows(bodies)
    log.reserve("orders", rows.num_rows, now)
    segment = log.stamp(rows, now)
    log.publish(segment, segment_name(segment))
    return segment


def segment_name(segment: pa.RecordBatch | pa.Table) -> str:
    return format.segment_name(segment.column("offset")[0].as_py(), 1)


def load(log: PartitionLog, segments: list[pa.Table], deleted: list[int], next_offset: int, now: float) -> None:
    """Recover ``log`` from stored segments and deleted offsets."""
    log.load([(segment_name(s), s) for s in segments], np.array(deleted, np.int64), next_offset, now)


def receive(log: PartitionLog, now: float, max_messages: int = 100, visibility_s: float = VISIBILITY) -> list[Delivery]:
    table = log.receive(max_messages, now, visibility_s)
    return [
        Delivery(row["body"], row["offset"], row["token"], row["receive_count"])
        for row in table.select(["body", "offset", "token", "receive_count"]).to_pylist()
    ]


def bodies(deliveries: list[Delivery]) -> list[bytes]:
    return [d.body for d in deliveries]


def prepare(log: PartitionLog, deliveries: list[Delivery]):
    offsets = np.array([d.offset for d in deliveries], np.int64)
    tokens = np.array([d.token for d in deliveries], np.int64)
    return log.prepare_delete(offsets, tokens, [d.receipt for d in deliveries])


def delete(log: PartitionLog, deliveries: list[Delivery]) -> None:
    log.commit_delete(prepare(log, deliveries))


def forged(delivery: Delivery, *, offset: int | None = None, token: int | None = None) -> Delivery:
    return Delivery(
        delivery.body,
        delivery.offset if offset is None else offset,
        delivery.token if token is None else token,
        delivery.receive_count,
    )


def segment_table(segment: pa.RecordBatch) -> pa.Table:
    return pa.Table.from_batches([segment])


# ------------------------------------------------------------------ ordering


def test_receive_hands_out_messages_in_send_order():
    log = new_log()
    send(log, [b"m0", b"m1", b"m2"])
    send(log, [b"m3"])
    send(log, [b"m4", b"m5"])

    first = receive(log, T0, max_messages=2)
    rest = receive(log, T0, max_messages=10)

    assert bodies(first) == [b"m0", b"m1"]
    assert bodies(rest) == [b"m2", b"m3", b"m4", b"m5"]


def test_a_receive_of_a_few_messages_carries_only_their_bytes_not_their_segments():
    import pickle

    log = new_log()
    send(log, [bytes([i % 256]) * 1000 for i in range(1000)])  # one segment of about 1 MB

    table = log.receive(2, T0, VISIBILITY)

    assert table["body"].to_pylist() == [b"\x00" * 1000, b"\x01" * 1000]
    # What goes back to the caller is pickled: a slice would take the whole segment along.
    assert len(pickle.dumps(table, protocol=5)) < 20_000


def test_receive_from_empty_log_returns_nothing():
    assert receive(new_log(), T0) == []


def test_receive_respects_max_messages():
    log = new_log()
    send(log, [b"a", b"b", b"c"])

    assert len(receive(log, T0, max_messages=1)) == 1


def test_offsets_grow_by_one_per_message():
    log = new_log()
    send(log, [b"a", b"b"])
    send(log, [b"c"])

    assert [d.offset for d in receive(log, T0)] == [0, 1, 2]
    assert log.next_offset == 3


# ---------------------------------------------------------------- visibility


def test_received_message_is_hidden_until_visibility_timeout():
    log = new_log()
    send(log, [b"a"])
    receive(log, T0)

    assert receive(log, T0 + VISIBILITY - 0.001) == []


def test_message_comes_back_after_visibility_timeout_with_new_token_and_count():
    log = new_log()
    send(log, [b"a"])
    (first,) = receive(log, T0)

    (again,) = receive(log, T0 + VISIBILITY)

    assert again.body == b"a"
    assert again.offset == first.offset
    assert first.receive_count == 1
    assert again.receive_count == 2
    assert again.token != first.token


def test_expired_visibility_messages_come_back_before_never_delivered_ones():
    log = new_log()
    send(log, [b"old"])
    receive(log, T0)
    send(log, [b"new"], now=T0 + 1)

    assert bodies(receive(log, T0 + VISIBILITY)) == [b"old", b"new"]


def test_receive_uses_the_visibility_it_is_given():
    log = new_log()
    send(log, [b"a"])
    receive(log, T0, visibility_s=5.0)

    assert receive(log, T0 + 4.9) == []
    assert bodies(receive(log, T0 + 5.0)) == [b"a"]


# ------------------------------------------------------------------ receipts


def test_old_receipt_is_rejected_after_redelivery_and_changes_nothing():
    log = new_log()
    send(log, [b"a"])
    (first,) = receive(log, T0)
    (second,) = receive(log, T0 + VISIBILITY)
    before = log.stats(T0 + VISIBILITY)

    with pytest.raises(InvalidReceipt) as caught:
        prepare(log, [first])

    assert caught.value.receipt == first.receipt
    assert log.stats(T0 + VISIBILITY) == before
    delete(log, [second])  # the latest receipt still works
    assert log.stats(T0 + VISIBILITY) == LogStats(visible=0, in_flight=0, stored_bytes=0)


def test_deleted_message_is_never_delivered_again():
    log = new_log()
    send(log, [b"a", b"b"])
    a, b = receive(log, T0)
    delete(log, [a])

    assert bodies(receive(log, T0 + 10 * VISIBILITY)) == [b"b"]


def test_deleting_twice_is_harmless():
    log = new_log()
    send(log, [b"a", b"b"])
    a, _ = receive(log, T0)
    delete(log, [a])
    stats = log.stats(T0)

    ticket = prepare(log, [a])
    log.commit_delete(ticket)

    assert len(ticket.offsets) == 0
    assert log.stats(T0) == stats


def test_receipt_with_offset_never_sent_is_rejected():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)

    with pytest.raises(InvalidReceipt, match="no such message"):
        prepare(log, [forged(a, offset=log.next_offset)])
    with pytest.raises(InvalidReceipt):
        prepare(log, [forged(a, offset=10**12)])


def test_receipt_with_forged_token_is_rejected():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)

    with pytest.raises(InvalidReceipt):
        prepare(log, [forged(a, token=a.token ^ 1)])
    assert log.stats(T0).in_flight == 1


def test_receipt_for_message_never_delivered_is_rejected():
    log = new_log()
    send(log, [b"a", b"b"])
    (a,) = receive(log, T0, max_messages=1)

    with pytest.raises(InvalidReceipt):
        prepare(log, [forged(a, offset=a.offset + 1)])


def test_batch_delete_with_one_stale_receipt_deletes_nothing():
    log = new_log()
    send(log, [b"a", b"b"])
    send(log, [b"c"])  # a second segment, so the bad receipt is in another chunk
    a, b, c = receive(log, T0)

    with pytest.raises(InvalidReceipt):
        prepare(log, [a, b, forged(c, token=c.token + 1)])

    assert log.stats(T0) == LogStats(visible=0, in_flight=3, stored_bytes=3)
    assert bodies(receive(log, T0 + VISIBILITY)) == [b"a", b"b", b"c"]


def test_batch_delete_with_one_forged_offset_deletes_nothing():
    log = new_log()
    send(log, [b"a", b"b"])
    a, b = receive(log, T0)

    with pytest.raises(InvalidReceipt):
        prepare(log, [a, b, forged(b, offset=99)])

    assert bodies(receive(log, T0 + VISIBILITY)) == [b"a", b"b"]


def test_same_receipt_twice_in_one_batch_deletes_only_that_message():
    log = new_log()
    send(log, [b"a", b"b"])
    a, b = receive(log, T0)

    delete(log, [a, a])

    assert log.stats(T0) == LogStats(visible=0, in_flight=1, stored_bytes=1)
    assert bodies(receive(log, T0 + VISIBILITY)) == [b"b"]


def test_forged_receipt_beside_the_valid_one_of_the_same_message_is_refused():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)

    with pytest.raises(InvalidReceipt):
        delete(log, [a, forged(a, token=a.token + 1)])

    assert log.stats(T0) == LogStats(visible=0, in_flight=1, stored_bytes=1)


def test_two_deletes_of_the_same_message_in_flight_both_commit():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)
    first = prepare(log, [a])
    second = prepare(log, [a])  # a retry that arrived before the first was stored

    log.commit_delete(first)
    log.commit_delete(second)

    assert log.stats(T0) == LogStats(visible=0, in_flight=0, stored_bytes=0)


# --------------------------------------------------------- pending deletes


def test_message_being_deleted_is_not_delivered_even_after_its_timeout():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)
    prepare(log, [a])

    assert receive(log, T0 + VISIBILITY) == []


def test_abort_delete_restores_the_message():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)
    ticket = prepare(log, [a])

    log.abort_delete(ticket)

    assert receive(log, T0 + VISIBILITY - 1) == []  # still in flight under its old timeout
    (again,) = receive(log, T0 + VISIBILITY)
    assert again.body == b"a"
    assert again.receive_count == 2


def test_abort_delete_keeps_the_receipt_valid():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)
    log.abort_delete(prepare(log, [a]))

    delete(log, [a])

    assert log.stats(T0).in_flight == 0
    assert receive(log, T0 + VISIBILITY) == []


def test_abort_delete_after_timeout_passed_makes_message_receivable():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)
    ticket = prepare(log, [a])
    assert receive(log, T0 + VISIBILITY + 1) == []  # the delete is still being stored

    log.abort_delete(ticket)

    assert bodies(receive(log, T0 + VISIBILITY + 2)) == [b"a"]


# ------------------------------------------------------------------- quota


def test_reserve_past_quota_raises_queue_full_with_counts():
    log = new_log(quota=3)
    send(log, [b"a", b"b"])

    with pytest.raises(QueueFull) as caught:
        log.reserve("orders", 2, T0)

    assert (caught.value.limit, caught.value.stored, caught.value.requested) == (3, 2, 2)
    assert caught.value.name == "orders"


def test_refused_reservation_holds_no_room():
    log = new_log(quota=3)
    send(log, [b"a", b"b"])
    with pytest.raises(QueueFull):
        log.reserve("orders", 2, T0)

    log.reserve("orders", 1, T0)  # the refused two took nothing
    assert log.stats(T0) == LogStats(visible=2, in_flight=0, stored_bytes=2)


def test_reservations_count_against_quota_before_they_are_published():
    log = new_log(quota=2)
    log.reserve("orders", 2, T0)

    with pytest.raises(QueueFull):
        log.reserve("orders", 1, T0)


def test_release_gives_the_room_back():
    log = new_log(quota=2)
    log.reserve("orders", 2, T0)

    log.release(2)

    log.reserve("orders", 2, T0)


def test_deleting_frees_quota():
    log = new_log(quota=2)
    send(log, [b"a", b"b"])
    a, _ = receive(log, T0)

    delete(log, [a])

    log.reserve("orders", 1, T0)


def test_quota_is_exact_at_the_limit():
    log = new_log(quota=3)
    log.reserve("orders", 3, T0)


# --------------------------------------------------------------- retention


def test_messages_older_than_retention_are_never_delivered():
    log = new_log(retention_s=100.0)
    send(log, [b"old"], now=T0)
    send(log, [b"young"], now=T0 + 50)

    assert bodies(receive(log, T0 + 100.5)) == [b"young"]


def test_message_is_kept_until_exactly_retention():
    log = new_log(retention_s=100.0)
    send(log, [b"a"], now=T0)

    assert bodies(receive(log, T0 + 100.0)) == [b"a"]


def test_expired_messages_are_counted_out_of_stats():
    log = new_log(retention_s=100.0)
    send(log, [b"aaa", b"bb"], now=T0)
    send(log, [b"c"], now=T0 + 50)
    receive(log, T0, max_messages=1)  # one of the old ones is in flight

    assert log.stats(T0 + 101) == LogStats(visible=1, in_flight=0, stored_bytes=1)


def test_expired_in_flight_message_is_not_redelivered():
    log = new_log(retention_s=100.0)
    send(log, [b"a"], now=T0)
    receive(log, T0, visibility_s=200.0)

    assert receive(log, T0 + 300) == []
    assert log.stats(T0 + 300) == LogStats(visible=0, in_flight=0, stored_bytes=0)


def test_receipt_of_expired_message_is_accepted_as_already_deleted():
    log = new_log(retention_s=100.0)
    send(log, [b"a"], now=T0)
    send(log, [b"b"], now=T0 + 90)
    (a,) = receive(log, T0, max_messages=1)
    receive(log, T0 + 101)  # expires a

    delete(log, [a])

    assert log.stats(T0 + 101).in_flight == 1  # b, untouched


# ------------------------------------------------------------------- stats


def test_stats_count_visible_in_flight_and_bytes_exactly():
    log = new_log()
    send(log, [b"1", b"22", b"333", b"4444"])
    assert log.stats(T0) == LogStats(visible=4, in_flight=0, stored_bytes=10)

    one, two = receive(log, T0, max_messages=2)
    assert log.stats(T0) == LogStats(visible=2, in_flight=2, stored_bytes=10)

    delete(log, [two])
    assert log.stats(T0) == LogStats(visible=2, in_flight=1, stored_bytes=8)

    assert log.stats(T0 + VISIBILITY) == LogStats(visible=3, in_flight=0, stored_bytes=8)


def test_stats_count_a_pending_delete_as_in_flight():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)
    prepare(log, [a])

    assert log.stats(T0 + VISIBILITY) == LogStats(visible=0, in_flight=1, stored_bytes=1)


def test_has_visible_follows_the_messages():
    log = new_log()
    assert not log.has_visible(T0)
    send(log, [b"a"])
    assert log.has_visible(T0)
    receive(log, T0)
    assert not log.has_visible(T0)
    assert log.has_visible(T0 + VISIBILITY)


# -------------------------------------------------------- change visibility


def test_change_visibility_to_zero_makes_message_visible_at_once():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)

    log.change_visibility(a.offset, a.token, a.receipt, 0.0, T0 + 1)

    (again,) = receive(log, T0 + 1)
    assert again.body == b"a"
    assert again.token != a.token


def test_change_visibility_can_extend_the_timeout():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)

    log.change_visibility(a.offset, a.token, a.receipt, 100.0, T0 + 10)

    assert receive(log, T0 + VISIBILITY) == []
    assert bodies(receive(log, T0 + 110)) == [b"a"]


def test_change_visibility_with_stale_receipt_is_rejected():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)
    receive(log, T0 + VISIBILITY)

    with pytest.raises(InvalidReceipt):
        log.change_visibility(a.offset, a.token, a.receipt, 0.0, T0 + VISIBILITY)
    assert receive(log, T0 + VISIBILITY) == []  # still hidden under the new delivery


def test_change_visibility_of_deleted_message_is_rejected():
    log = new_log()
    send(log, [b"a", b"b"])
    a, _ = receive(log, T0)
    delete(log, [a])

    with pytest.raises(InvalidReceipt):
        log.change_visibility(a.offset, a.token, a.receipt, 0.0, T0)


def test_change_visibility_of_offset_never_sent_is_rejected():
    log = new_log()
    send(log, [b"a"])
    (a,) = receive(log, T0)

    with pytest.raises(InvalidReceipt):
        log.change_visibility(5, a.token, "0.5.1", 0.0, T0)


# ---------------------------------------------------------------- recovery


def stored_segments(bodies_per_segment: list[list[bytes]], now: float = T0) -> tuple[list[pa.Table], int]:
    """Segments as a partition would have written them, and the next offset."""
    writer = new_log()
    segments = [segment_table(writer.stamp(make_rows(b), now)) for b in bodies_per_segment]
    return segments, writer.next_offset


def test_load_makes_every_undeleted_message_visible_in_order():
    segments, next_offset = stored_segments([[b"m0", b"m1"], [b"m2"], [b"m3", b"m4"]])
    log = new_log()

    load(log, segments, [1, 3], next_offset, T0)

    delivered = receive(log, T0)
    assert bodies(delivered) == [b"m0", b"m2", b"m4"]
    assert all(d.receive_count == 1 for d in delivered)


def test_load_never_brings_back_deleted_messages():
    segments, next_offset = stored_segments([[b"m0", b"m1"], [b"m2"]])
    log = new_log()
    load(log, segments, [0, 1, 2], next_offset, T0)

    assert receive(log, T0 + 10 * VISIBILITY) == []
    assert log.stats(T0) == LogStats(visible=0, in_flight=0, stored_bytes=0)


def test_load_stats_count_only_undeleted_messages():
    segments, next_offset = stored_segments([[b"aa", b"bbb"], [b"c"]])
    log = new_log()
    load(log, segments, [1], next_offset, T0)

    assert log.stats(T0) == LogStats(visible=2, in_flight=0, stored_bytes=3)


def test_sends_after_load_continue_after_the_stored_offsets():
    segments, next_offset = stored_segments([[b"m0", b"m1"]])
    log = new_log()
    load(log, segments, [], next_offset + 5, T0)  # a gap left by a failed write

    segment = send(log, [b"new"])

    assert segment.column("offset").to_pylist() == [next_offset + 5]
    assert bodies(receive(log, T0)) == [b"m0", b"m1", b"new"]


def test_load_drops_messages_past_retention():
    writer = new_log()
    old = segment_table(writer.stamp(make_rows([b"old"]), T0))
    young = segment_table(writer.stamp(make_rows([b"young"]), T0 + 50))
    log = new_log(retention_s=100.0)

    load(log, [old, young], [], writer.next_offset, T0 + 120)

    assert bodies(receive(log, T0 + 120)) == [b"young"]


def test_load_counts_loaded_messages_against_quota():
    segments, next_offset = stored_segments([[b"a", b"b"]])
    log = new_log(quota=2)
    load(log, segments, [], next_offset, T0)

    with pytest.raises(QueueFull):
        log.reserve("orders", 1, T0)


# ------------------------------------------------------------------- dedup


def test_remembered_ids_are_seen_within_the_window():
    log = new_log()
    log.remember_ids(["x", "y"], T0)

    assert log.seen_ids(["x", "z", "y"], T0 + DEDUP_WINDOW - 1) == [True, False, True]


def test_remembered_ids_are_forgotten_after_the_window():
    log = new_log()
    log.remember_ids(["x"], T0)

    assert log.seen_ids(["x"], T0 + DEDUP_WINDOW) == [False]


def test_remembering_again_extends_the_window():
    log = new_log()
    log.remember_ids(["x"], T0)
    log.remember_ids(["x"], T0 + 100)

    assert log.seen_ids(["x"], T0 + DEDUP_WINDOW + 50) == [True]


def test_ids_of_loaded_segments_are_remembered_from_their_send_time():
    writer = new_log()
    segment = writer.stamp(make_rows([b"a"], ids=["id-1"]), T0)
    log = new_log()

    load(log, [segment_table(segment)], [], writer.next_offset, T0 + 10)

    assert log.seen_ids(["id-1"], T0 + DEDUP_WINDOW - 1) == [True]
    assert log.seen_ids(["id-1"], T0 + DEDUP_WINDOW) == [False]


def test_ids_of_deleted_messages_are_still_remembered_after_load():
    writer = new_log()
    segment = writer.stamp(make_rows([b"a"], ids=["id-1"]), T0)
    log = new_log()

    load(log, [segment_table(segment)], [0], writer.next_offset, T0 + 10)

    assert log.seen_ids(["id-1"], T0 + 20) == [True]
