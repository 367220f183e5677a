"""Rows sent to partitions, message ids, receipts, and errors that cross processes."""

from __future__ import annotations

import pickle
import threading

import pyarrow as pa
import pytest

from rayqueue import defaults
from rayqueue.client.rows import (
    IdSource,
    batches,
    check_attributes,
    check_text,
    delivery_table,
    messages_from_delivery,
    parse_receipts,
    receipt_column,
    send_rows,
)
from rayqueue.config import QueueConfig
from rayqueue.errors import (
    InvalidArgument,
    InvalidReceipt,
    MessageTooLarge,
    ObjectExists,
    PartitionUnavailable,
    QueueAlreadyExists,
    QueueFull,
    QueueNotFound,
    RayQueueError,
    StorageCorrupt,
    StorageMismatch,
    StorageUnavailable,
)
from rayqueue.message import Receipt, decode_receipt, encode_receipt, shown
from rayqueue.partition.log import PartitionLog
from rayqueue.schemas import SEND_SCHEMA

CONFIG = QueueConfig.build(name="orders", max_messages=1000, max_message_bytes=8)


def ids(n: int) -> list[str]:
    return [f"id-{i}" for i in range(n)]


# ---------------------------------------------------------------- send_rows


def test_send_rows_builds_one_row_per_body_in_the_send_schema():
    table = send_rows(CONFIG, [b"a", b"bb"], ["x", "y"])

    assert table.schema.equals(SEND_SCHEMA)
    assert table.column("id").to_pylist() == ["x", "y"]
    assert table.column("body").to_pylist() == [b"a", b"bb"]
    assert table.column("key").to_pylist() == [None, None]
    assert table.column("attributes").to_pylist() == [None, None]


def test_str_bodies_are_encoded_as_utf8():
    table = send_rows(CONFIG, ["héllo"], ids(1))

    assert table.column("body").to_pylist() == ["héllo".encode()]


@pytest.mark.parametrize("body", [bytearray(b"abc"), memoryview(b"abc")])
def test_bytes_like_bodies_are_accepted(body):
    assert send_rows(CONFIG, [body], ids(1)).column("body").to_pylist() == [b"abc"]


def test_body_at_the_limit_is_accepted():
    send_rows(CONFIG, [b"x" * 8], ids(1))


def test_oversized_body_raises_message_too_large_naming_it():
    with pytest.raises(MessageTooLarge) as caught:
        send_rows(CONFIG, [b"ok", b"x" * 9, b"ok"], ids(3))

    error = caught.value
    assert (error.index, error.size, error.limit, error.name) == (1, 9, 8, "orders")
    assert "message 1" in str(error)


def test_size_limit_counts_utf8_bytes_not_characters():
    send_rows(CONFIG, ["éééé"], ids(1))  # 8 bytes

    with pytest.raises(MessageTooLarge) as caught:
        send_rows(CONFIG, ["ééééé"], ids(1))  # 5 characters, 10 bytes
    assert caught.value.size == 10


def test_message_too_large_is_a_value_error():
    with pytest.raises(ValueError):
        send_rows(CONFIG, [b"x" * 100], ids(1))


@pytest.mark.parametrize("body", [123, None, ["a"], {"a": 1}, 1.5])
def test_body_of_wrong_type_is_rejected_naming_its_index(body):
    with pytest.raises(InvalidArgument, match="message 1"):
        send_rows(CONFIG, [b"ok", body], ids(2))


def test_batch_over_the_byte_limit_is_rejected(monkeypatch):
    monkeypatch.setattr(defaults, "MAX_BATCH_BYTES", 10)

    send_rows(CONFIG, [b"x" * 5, b"y" * 5], ids(2))
    with pytest.raises(InvalidArgument, match="10 bytes"):
        send_rows(CONFIG, [b"x" * 5, b"y" * 6], ids(2))


def test_key_and_attributes_go_on_every_row():
    table = send_rows(CONFIG, [b"a", b"b"], ids(2), key="k", attributes=[("colour", "red")])

    assert table.column("key").to_pylist() == ["k", "k"]
    assert table.column("attributes").to_pylist() == [[("colour", "red")], [("colour", "red")]]


# ------------------------------------------------------------- attributes


def test_no_attributes_is_none():
    assert check_attributes(None) is None


def test_attributes_become_pairs():
    assert check_attributes({"a": "1", "b": ""}) == [("a", "1"), ("b", "")]


def test_at_most_max_attributes_are_allowed():
    check_attributes({f"k{i}": "v" for i in range(defaults.MAX_ATTRIBUTES)})

    with pytest.raises(InvalidArgument):
        check_attributes({f"k{i}": "v" for i in range(defaults.MAX_ATTRIBUTES + 1)})


@pytest.mark.parametrize(
    "attributes",
    [
        {"": "v"},
        {"k" * (defaults.MAX_ATTRIBUTE_KEY_LENGTH + 1): "v"},
        {"k": "v" * (defaults.MAX_ATTRIBUTE_VALUE_LENGTH + 1)},
        {1: "v"},
        {"k": 1},
        {"k": None},
        [("k", "v")],
        "k=v",
    ],
)
def test_bad_attributes_are_rejected(attributes):
    with pytest.raises(InvalidArgument):
        check_attributes(attributes)


def test_longest_attribute_key_and_value_are_accepted():
    key = "k" * defaults.MAX_ATTRIBUTE_KEY_LENGTH
    value = "v" * defaults.MAX_ATTRIBUTE_VALUE_LENGTH

    assert check_attributes({key: value}) == [(key, value)]


def test_check_text_quotes_the_length_it_refuses():
    with pytest.raises(InvalidArgument, match="5 chars"):
        check_text("key", "abcde", 4)
    assert check_text("key", "abcd", 4) == "abcd"


# --------------------------------------------------------------------- ids


def test_id_source_never_repeats():
    source = IdSource()
    taken = source.take(1) + source.take(5) + source.take(0) + source.take(1) + source.take(100) + source.take(2)

    assert len(taken) == 109
    assert len(set(taken)) == len(taken)


def test_two_id_sources_do_not_collide():
    first, second = IdSource(), IdSource()

    assert not set(first.take(1000)) & set(second.take(1000))


def test_take_returns_exactly_n_ids():
    assert [len(IdSource().take(n)) for n in (0, 1, 7)] == [0, 1, 7]


# ----------------------------------------------------------------- receipts


@pytest.mark.parametrize(
    ("partition", "epoch", "offset", "token"),
    [(0, 0, 0, 1), (3, 7, 42, 0xABCDEF), (255, 9_999_999_999, 2**63 - 1, 2**62 - 1)],
)
def test_receipt_round_trips(partition, epoch, offset, token):
    receipt = encode_receipt(partition, offset, token, epoch=epoch)

    assert receipt == f"{partition}.{epoch}.{offset}.{token}"
    assert decode_receipt(receipt) == Receipt(partition, epoch, offset, token)


MALFORMED_RECEIPTS = [
    "",
    "0",
    "0.1",
    "0.1.2",  # no epoch: see test_receipt_without_an_epoch_is_refused_as_from_before_an_upgrade
    "0.1.2.3.4",
    "....",
    "a.1.1.1",
    "0.e.1.1",
    "0.1.b.1",
    "0.1.1.xyz",
    "0.1.1.",
    ".1.1.1",
    "-1.1.0.1",
    "0.-1.0.1",
    "0.1.-1.1",
    "0.1.0.-1",
    "+0.1.1.2",
    "0x1.1.1.2",
    "١.١.٢.٣",  # digits, but not ASCII ones
    "0.1.0.0",  # tokens start at 1: 0 means "never delivered"
    f"0.{10**10}.0.1",  # epochs have at most 10 digits
    f"0.1.{2**63}.1",
    f"0.1.0.{2**62}",  # tokens are drawn below 2**62
    f"0.1.{'9' * 5000}.1",
    "100000.1.1.2",
    "0.1.1.1\x00",
    "0.1.1.1\n",
    " 0.1.1.1",
]


@pytest.mark.parametrize("receipt", MALFORMED_RECEIPTS)
def test_malformed_receipt_is_rejected(receipt):
    with pytest.raises(InvalidReceipt) as caught:
        decode_receipt(receipt)

    assert caught.value.receipt == shown(receipt)


@pytest.mark.parametrize("receipts", [MALFORMED_RECEIPTS[i : i + 1] for i in range(len(MALFORMED_RECEIPTS))])
def test_malformed_receipt_in_a_column_is_rejected_and_named(receipts):
    column = pa.array(["0.1.1.1", *receipts, "0.1.2.2"], pa.string())

    with pytest.raises(InvalidReceipt) as caught:
        parse_receipts(column)

    assert caught.value.receipt == shown(receipts[0])


def test_receipt_without_an_epoch_is_refused_as_from_before_an_upgrade():
    for parse in (decode_receipt, lambda r: parse_receipts(pa.array([r]))):
        with pytest.raises(InvalidReceipt) as caught:
            parse("0.5.7")

        assert "no epoch" in caught.value.reason


def test_a_huge_receipt_is_quoted_cut_short():
    with pytest.raises(InvalidReceipt) as caught:
        decode_receipt("9" * 1_000_000)

    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("receipts", [["\ud800"], ["0.1.1.1", "0.1.2.2\udfff"]])
def test_a_receipt_that_is_not_valid_unicode_is_invalid_not_a_raw_error(receipts):
    with pytest.raises(InvalidReceipt) as caught:
        receipt_column(receipts)

    assert caught.value.receipt == receipts[-1]
    with pytest.raises(InvalidReceipt):
        decode_receipt(receipts[-1])


@pytest.mark.parametrize("receipts", [[None], ["0.1.1.1", None], [b"0.1.1.1"], [5]])
def test_a_receipt_that_is_not_a_str_is_invalid_in_a_batch(receipts):
    with pytest.raises(InvalidReceipt):
        receipt_column(receipts)


@pytest.mark.parametrize("receipts", [[None], ["0.1.1.1", None]])
def test_a_null_in_a_receipt_column_is_invalid(receipts):
    with pytest.raises(InvalidReceipt):
        parse_receipts(pa.array(receipts, pa.string()))


@pytest.mark.parametrize("receipts", ["0.1.1.1", 5, {"0.1.1.1"}])
def test_receipts_that_are_not_a_sequence_are_an_invalid_argument(receipts):
    with pytest.raises(InvalidArgument):
        receipt_column(receipts)


def test_receipt_column_parses_like_single_receipts():
    parts = [(0, 0, 0, 1), (3, 7, 42, 0xABCDEF), (255, 9_999_999_999, 2**63 - 1, 2**62 - 1)]
    receipts = [encode_receipt(p, o, t, epoch=e) for p, e, o, t in parts]

    parsed = parse_receipts(pa.chunked_array([receipts[:1], receipts[1:]]))

    assert list(zip(*parsed)) == [decode_receipt(r) for r in receipts] == parts
    assert all(column.dtype == "int64" for column in parsed)


@pytest.mark.parametrize("receipt", [None, 5, b"0.1.1.1", ("0", "1", "1", "1")])
def test_receipt_that_is_not_a_string_is_rejected(receipt):
    with pytest.raises(InvalidReceipt):
        decode_receipt(receipt)


def test_invalid_receipt_is_a_value_error():
    with pytest.raises(ValueError):
        decode_receipt("nonsense")


# ---------------------------------------------------------- deliveries


def _delivered_log(partition: int, epoch: int) -> PartitionLog:
    log = PartitionLog(partition, quota=10, retention_s=3600.0, dedup_window_s=300.0)
    log.epoch = epoch
    rows = send_rows(CONFIG, [b"a", b"b"], ["id-a", "id-b"], key="k", attributes=[("x", "1")])
    log.reserve("orders", 2, 1_700_000_000.5)
    log.publish(log.stamp(rows, 1_700_000_000.5), "segments/first")
    return log


def test_messages_from_delivery_carry_receipts_for_their_delivery():
    log = _delivered_log(2, epoch=7)

    messages = messages_from_delivery(2, log.receive(10, 1_700_000_001.0, 30.0))

    assert [(m.id, m.body, m.key, m.attributes, m.receive_count) for m in messages] == [
        ("id-a", b"a", "k", {"x": "1"}, 1),
        ("id-b", b"b", "k", {"x": "1"}, 1),
    ]
    assert [m.sent_at for m in messages] == [1_700_000_000.5, 1_700_000_000.5]
    receipt = decode_receipt(messages[1].receipt)
    assert (receipt.partition, receipt.epoch, receipt.offset) == (2, 7, 1) and receipt.token > 0
    assert [m.epoch for m in messages] == [7, 7]


def test_the_bulk_receipt_column_matches_the_messages_receipts():
    delivery = _delivered_log(2, epoch=7).receive(10, 1_700_000_001.0, 30.0)

    table = delivery_table(2, delivery)

    assert table.column("receipt").to_pylist() == [m.receipt for m in messages_from_delivery(2, delivery)]
    assert list(zip(*parse_receipts(table.column("receipt")))) == [
        decode_receipt(receipt) for receipt in table.column("receipt").to_pylist()
    ]


def test_empty_delivery_gives_no_messages():
    log = PartitionLog(0, quota=10, retention_s=3600.0, dedup_window_s=300.0)

    assert messages_from_delivery(0, log.receive(10, 0.0, 30.0)) == []


# ------------------------------------------------------------------- errors

ERRORS = [
    RayQueueError("plain"),
    InvalidArgument("bad value", name="x"),
    QueueNotFound("orders"),
    QueueAlreadyExists("orders", {"partitions": (1, 2)}),
    QueueFull("orders", 10, 9, 2),
    MessageTooLarge("orders", 100, 10, 3),
    InvalidReceipt("0.1.2", "stale"),
    StorageMismatch("memory://a", "file:///b"),
    StorageUnavailable("put", "/x", "OSError: down"),
    StorageCorrupt("/x", "torn"),
    ObjectExists("/x"),
    PartitionUnavailable("orders", 3, "actor died"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_type_message_and_fields(error):
    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.message == error.message
    assert copy.args == error.args
    assert vars(copy) == vars(error)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_is_a_rayqueue_error(error):
    assert isinstance(error, RayQueueError)


def test_errors_carry_the_values_that_explain_them():
    full = QueueFull("orders", limit=10, stored=9, requested=2)
    exists = QueueAlreadyExists("orders", {"partitions": (1, 2)})

    assert (full.name, full.limit, full.stored, full.requested) == ("orders", 10, 9, 2)
    assert "partitions: existing 1, requested 2" in str(exists)
    assert exists.differences == {"partitions": (1, 2)}


def test_unpickled_error_can_be_raised_and_caught_by_its_type():
    copy = pickle.loads(pickle.dumps(QueueNotFound("orders")))

    with pytest.raises(QueueNotFound, match="'orders' does not exist"):
        raise copy


def test_ids_from_threads_sharing_a_source_never_repeat():
    source = IdSource()
    taken: list[list[str]] = []

    def take() -> None:
        mine = []
        for n in (1, 7, 1, 100, 3) * 200:
            mine += source.take(n)
        taken.append(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [message_id for mine in taken for message_id in mine]
    assert len(every) == len(set(every)) == 4 * 200 * 112


def test_batches_keep_order_and_stay_within_the_count_and_byte_limits(monkeypatch):
    monkeypatch.setattr(defaults, "MAX_BATCH_BYTES", 10)
    assert list(batches([b"a"] * 5, 2)) == [[b"a", b"a"], [b"a", b"a"], [b"a"]]
    assert list(batches([b"12345", b"6789", b"ab", b"c"], 100)) == [[b"12345", b"6789"], [b"ab", b"c"]]
    assert list(batches(["ééééé", "é"], 100)) == [["ééééé"], ["é"]]  # text counts as UTF-8: 10 + 2 bytes
    assert list(batches([b"x" * 50, b"y"], 100)) == [[b"x" * 50], [b"y"]]  # a body alone may pass the limit
    assert list(batches([], 3)) == []
