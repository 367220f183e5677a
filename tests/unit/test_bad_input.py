"""Bad input across the public API (security review, section 3): each row gives a named
rayqueue error that says what is wrong, before anything is sent or stored.

Driven without Ray: through the pure modules (rows, config, validation, autoscale), a
``Queue`` handle's plans (their checks run before the first call is yielded), the
consumer, ``read_dataset`` (whose checks run before Ray Data is asked for anything)
and the CLI's argument checks. The partition's own check of what it is sent is tested
in test_partition_service.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from rayqueue import cli, defaults
from rayqueue.client.consumer import BufferedConsumer
from rayqueue.client.plan import Calls
from rayqueue.client.queue import Queue
from rayqueue.client.rows import IdSource, check_attributes, receipt_column, send_rows, send_rows_from_arrow
from rayqueue.config import QueueConfig
from rayqueue.control.autoscale import LoadSample, ScalingPolicy, decide
from rayqueue.errors import SHOWN_CHARS, InvalidArgument, InvalidReceipt, MessageTooLarge, RayQueueError
from rayqueue.message import decode_receipt
from rayqueue.routes import Route
from rayqueue.validation import check, count, number

CONFIG = QueueConfig.build(name="orders", max_messages=1000, max_message_bytes=1000)
IDS = IdSource()
MAP = pa.map_(pa.string(), pa.string())
NOT_UTF8 = pa.array([b"\xff\xfe"], pa.binary()).view(pa.string())
GOOD_RECEIPT = "0.1.5.77"


def handle(partitions: int = 1) -> Queue:
    config = QueueConfig.build(name="orders", max_messages=1000, max_message_bytes=1000, partitions=partitions)
    return Queue("orders", None, Route(config, "uid", tuple(object() for _ in range(partitions))))


def first_call(plan: Any) -> Any:
    """Run a plan up to its first call: every check of the arguments happens before it."""
    return next(plan)


def build(**settings: Any) -> QueueConfig:
    return QueueConfig.build(**{"name": "orders", "max_messages": 1000, "max_message_bytes": 1000, **settings})


def arrow(table: pa.Table | pa.Array) -> Callable[[], Any]:
    return lambda: send_rows_from_arrow(CONFIG, table, IDS.take_array(len(table)))


def zeros(size: int) -> pa.Buffer:
    """``size`` zero bytes that take no memory until read (numpy's zeros come from calloc)."""
    return pa.py_buffer(np.zeros(size, np.uint8))


def large_binary(sizes: list[int]) -> pa.Array:
    """A large_binary column of bodies of ``sizes`` bytes, all over one lazily zeroed buffer."""
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return pa.Array.from_buffers(pa.large_binary(), len(sizes), [None, pa.py_buffer(offsets), zeros(int(offsets[-1]))])


def read_dataset(max_messages: Any, **options: Any) -> Any:
    from rayqueue import data  # imports Ray Data (not Ray's runtime): only the tests that need it

    return data.read_dataset(None, max_messages, **options)  # type: ignore[arg-type]


def with_attributes(pairs: list[tuple[str, str | None]] | pa.Array) -> pa.Table:
    column = pairs if isinstance(pairs, pa.Array) else pa.array([pairs], MAP)
    return pa.table({"body": [b"a"] * len(column), "attributes": column})


# (what is called, the named error, a pattern its message must match)
ROWS = [
    # ---- queue settings
    pytest.param(lambda: build(name="a" * 100_000_000), InvalidArgument, r"queue name 'aaa+\.\.\.", id="100 MB name"),
    pytest.param(
        lambda: build(partitions=4, max_messages=3),
        InvalidArgument,
        r"max_messages \(3\) must be at least max_partitions \(4\)",
        id="max_messages < partitions",
    ),
    pytest.param(
        lambda: build(max_messages=3, max_partitions=4, min_partitions=1),
        InvalidArgument,
        r"at least max_partitions \(4\)",
        id="max_messages < max_partitions",
    ),
    pytest.param(
        lambda: build(partitions=0),
        InvalidArgument,
        r"^partitions \(0\): input should be greater than or equal to 1$",
        id="partitions 0 names partitions only",
    ),
    pytest.param(
        lambda: build(partition_num_cpus=1e-9),
        InvalidArgument,
        r"partition_num_cpus \(1e-09\): must be a multiple of 0.0001",
        id="num_cpus 1e-9",
    ),
    pytest.param(
        lambda: build(partition_num_cpus=0.00015),
        InvalidArgument,
        r"partition_num_cpus .*multiple of 0.0001",
        id="num_cpus 0.00015",
    ),
    pytest.param(
        lambda: build(target_send_rate=5e-324),
        InvalidArgument,
        r"target_send_rate \(5e-324\): input should be greater than or equal to 0.001",
        id="send rate 5e-324",
    ),
    pytest.param(
        lambda: build(target_send_rate=math.inf),
        InvalidArgument,
        r"target_send_rate \(inf\): input should be a finite number",
        id="send rate inf",
    ),
    pytest.param(
        lambda: build(target_send_rate=2e9),
        InvalidArgument,
        r"target_send_rate \(2000000000.0\): input should be less than or equal",
        id="send rate 2e9",
    ),
    pytest.param(
        lambda: build(partition_resources={"x": math.nan}),
        InvalidArgument,
        r"partition_resources.x \(nan\): input should be a finite number",
        id="resource nan",
    ),
    pytest.param(
        lambda: build(partition_resources={"x": math.inf}),
        InvalidArgument,
        r"partition_resources.x \(inf\): input should be a finite number",
        id="resource inf",
    ),
    pytest.param(
        lambda: build(partition_resources={"x": -1.0}),
        InvalidArgument,
        r"partition_resources.x \(-1.0\): input should be greater than or equal to 0",
        id="resource -1",
    ),
    pytest.param(
        lambda: build(partition_resources={"x": 1e300}),
        InvalidArgument,
        r"partition_resources.x \(1e\+300\): input should be less than or equal",
        id="resource 1e300",
    ),
    pytest.param(
        lambda: build(partition_resources={"x": 1e-9}),
        InvalidArgument,
        r"'x' \(1e-09\) must be a multiple of 0.0001",
        id="resource 1e-9",
    ),
    pytest.param(
        lambda: build(partition_resources={"CPU": 1.0}),
        InvalidArgument,
        r"'CPU' is one of Ray's own resources",
        id="resource CPU",
    ),
    pytest.param(
        lambda: build(partition_resources={"GPU": 1.0}),
        InvalidArgument,
        r"'GPU' is one of Ray's own resources",
        id="resource GPU",
    ),
    pytest.param(
        lambda: build(partition_resources={"memory": 1.0}),
        InvalidArgument,
        r"'memory' is one of Ray's own resources",
        id="resource memory",
    ),
    pytest.param(
        lambda: build(partition_resources={"": 1.0}),
        InvalidArgument,
        r"a resource name must not be empty",
        id="resource unnamed",
    ),
    pytest.param(
        lambda: build(partition_resources={"x": "1"}),
        InvalidArgument,
        r"partition_resources.x \('1'\): input should be a valid number",
        id="resource str",
    ),
    # ---- receive, change_visibility, the consumer, read_dataset
    pytest.param(
        lambda: first_call(handle()._receive_plan(10_001, 0.0, None)),
        InvalidArgument,
        r"max_messages \(10001\) must be an int from 1 to 10,000",
        id="receive 10001",
    ),
    pytest.param(
        lambda: first_call(handle()._receive_plan(True, 0.0, None)),
        InvalidArgument,
        r"max_messages \(True\) must be an int",
        id="receive True",
    ),
    pytest.param(
        lambda: first_call(handle()._receive_plan(np.int64(5), 0.0, None)),
        InvalidArgument,
        r"max_messages \(np.int64\(5\)\) must be an int",
        id="receive numpy int",
    ),
    pytest.param(
        lambda: first_call(handle()._receive_plan(1, math.nan, None)),
        InvalidArgument,
        r"wait_s \(nan\) must be a number from 0 to 20",
        id="wait nan",
    ),
    pytest.param(
        lambda: first_call(handle()._receive_plan(1, 0.0, -1.0)),
        InvalidArgument,
        r"visibility_timeout_s \(-1.0\) must be a number from 0 to 43200",
        id="visibility -1",
    ),
    pytest.param(
        lambda: first_call(handle()._visibility_plan(GOOD_RECEIPT, math.inf)),
        InvalidArgument,
        r"timeout_s \(inf\) must be a number",
        id="change_visibility inf",
    ),
    pytest.param(
        lambda: BufferedConsumer(handle(), flush_interval_s="1"),
        InvalidArgument,
        r"flush_interval_s \('1'\) must be a number from 0 to 43200",
        id="flush_interval_s str",
    ),
    pytest.param(
        lambda: BufferedConsumer(handle(), flush_interval_s=math.nan),
        InvalidArgument,
        r"flush_interval_s \(nan\) must be a number",
        id="flush_interval_s nan",
    ),
    pytest.param(
        lambda: BufferedConsumer(handle(), prefetch=0),
        InvalidArgument,
        r"prefetch \(0\) must be an int from 1 to 10,000",
        id="prefetch 0",
    ),
    pytest.param(
        lambda: BufferedConsumer(handle(), visibility_timeout_s=math.inf),
        InvalidArgument,
        r"visibility_timeout_s \(inf\) must be a number",
        id="consumer visibility inf",
    ),
    pytest.param(
        lambda: read_dataset(10**400),
        InvalidArgument,
        r"max_messages \(1000000000.*\.\.\.\) must be an int from 1 to 1,000,000,000,000",
        id="read_dataset 10**400",
    ),
    pytest.param(
        lambda: read_dataset(10**5000),
        InvalidArgument,
        r"max_messages \(an int too long to print\) must be an int",
        id="read_dataset 10**5000",
    ),
    pytest.param(
        lambda: read_dataset(10, wait_s=-1.0),
        InvalidArgument,
        r"wait_s \(-1.0\) must be a number from 0 to 20",
        id="read_dataset wait -1",
    ),
    pytest.param(
        lambda: read_dataset(10, visibility_timeout_s=math.nan),
        InvalidArgument,
        r"visibility_timeout_s \(nan\)",
        id="read_dataset visibility nan",
    ),
    pytest.param(
        lambda: read_dataset(10, batch_size=0),
        InvalidArgument,
        r"batch_size \(0\) must be an int from 1 to 10,000",
        id="read_dataset batch 0",
    ),
    # ---- the single-message path
    pytest.param(
        lambda: send_rows(CONFIG, ["\ud800"], IDS.take(1)),
        InvalidArgument,
        r"message 0: body .*lone surrogate",
        id="body surrogate",
    ),
    pytest.param(
        lambda: first_call(handle()._send_plan(b"a", "k\udcff", None, None)),
        InvalidArgument,
        r"key \('k\\udcff'\) holds '\\udcff' at 1, a lone surrogate",
        id="key surrogate",
    ),
    pytest.param(
        lambda: first_call(handle()._send_plan(b"a", None, None, "\udcff")),
        InvalidArgument,
        r"message_id .*lone surrogate",
        id="message_id surrogate",
    ),
    pytest.param(
        lambda: check_attributes({"\udcff": "v"}),
        InvalidArgument,
        r"attribute name .*lone surrogate",
        id="attribute name surrogate",
    ),
    pytest.param(
        lambda: check_attributes({"k": "\udcff"}),
        InvalidArgument,
        r"attribute 'k' .*lone surrogate",
        id="attribute value surrogate",
    ),
    pytest.param(
        lambda: first_call(handle()._send_plan(b"a", "k" * 10_000_000, None, None)),
        InvalidArgument,
        rf"key \('k{{{SHOWN_CHARS - 4}}}\.\.\., 10000000 chars\) must be 1 to 256",
        id="key of 10 MB cut short",
    ),
    pytest.param(
        lambda: first_call(handle()._send_batch_plan([b"a"] * 10_001)),
        InvalidArgument,
        r"a batch \(10001 messages\) must hold at most 10000",
        id="send_batch 10001",
    ),
    pytest.param(
        lambda: first_call(handle()._send_plan(b"x" * 1001, None, None, None)),
        MessageTooLarge,
        r"message 0 for queue 'orders' is 1001 bytes",
        id="body over max_message_bytes",
    ),
    # ---- the Arrow bulk path: keys and attributes as on the single-message path
    pytest.param(
        arrow(pa.table({"body": [b"a", b"b"], "key": ["k", "k" * 300]})),
        InvalidArgument,
        r"key of message 1 \('k+\.\.\., 300 chars\) must be 1 to 256",
        id="arrow key 300",
    ),
    pytest.param(
        arrow(pa.table({"body": [b"a"], "key": ["k" * 10_000_000]})),
        InvalidArgument,
        r"key of message 0 .*10000000 chars",
        id="arrow key 10 MB",
    ),
    pytest.param(
        arrow(pa.table({"body": [b"a"], "key": pa.array(["k" * 300], pa.large_string())})),
        InvalidArgument,
        r"key of message 0 .*300 chars",
        id="arrow large_string key 300",
    ),
    pytest.param(
        arrow(pa.table({"body": [b"a", b"b"], "key": [None, ""]})),
        InvalidArgument,
        r"key of message 1 \('', 0 chars\) must be 1 to 256",
        id="arrow empty key",
    ),
    pytest.param(
        arrow(pa.table({"body": [b"a", b"b"], "key": pa.concat_arrays([pa.array(["ok"]), NOT_UTF8])})),
        InvalidArgument,
        r"key of message 1 is not valid UTF-8",
        id="arrow key not UTF-8",
    ),
    pytest.param(
        arrow(pa.table({"body": [b"a", b"b"], "key": pa.chunked_array([pa.array(["ok"]), NOT_UTF8])})),
        InvalidArgument,
        r"key of message 1 is not valid UTF-8",
        id="arrow key not UTF-8, second chunk",
    ),
    pytest.param(
        arrow(with_attributes([(str(i), "v") for i in range(50)])),
        InvalidArgument,
        r"attributes of message 0 \(50\) must number at most 10",
        id="arrow 50 attributes",
    ),
    pytest.param(
        arrow(with_attributes([("k", "v" * 50_000_000)])),
        InvalidArgument,
        r"attribute value of message 0 .*50000000 chars\) must be at most 4096",
        id="arrow attribute of 50 MB",
    ),
    pytest.param(
        arrow(with_attributes([("k", "v" * 4097)])),
        InvalidArgument,
        r"attribute value of message 0 .*4097 chars",
        id="arrow attribute value 4097",
    ),
    pytest.param(
        arrow(with_attributes([("k" * 257, "v")])),
        InvalidArgument,
        r"attribute name of message 0 .*257 chars\) must be 1 to 256",
        id="arrow attribute name 257",
    ),
    pytest.param(
        arrow(with_attributes([("", "v")])),
        InvalidArgument,
        r"attribute name of message 0 \('', 0 chars\)",
        id="arrow empty attribute name",
    ),
    pytest.param(
        arrow(with_attributes([("k", None)])),
        InvalidArgument,
        r"attribute value of message 0 is null",
        id="arrow null attribute value",
    ),
    pytest.param(
        arrow(with_attributes(pa.array([None, [("a", "1"), ("b", None)]], MAP))),
        InvalidArgument,
        r"attribute value of message 1 is null",
        id="arrow null attribute value, second row",
    ),
    pytest.param(
        arrow(with_attributes(pa.MapArray.from_arrays(pa.array([0, 1], pa.int32()), NOT_UTF8, pa.array(["v"])))),
        InvalidArgument,
        r"attribute name of message 0 is not valid UTF-8",
        id="arrow attribute name not UTF-8",
    ),
    pytest.param(
        arrow(
            with_attributes(
                pa.MapArray.from_arrays(
                    pa.array([0, 1, 2], pa.int32()), pa.array(["a", "b"]), pa.concat_arrays([pa.array(["v"]), NOT_UTF8])
                )
            )
        ),
        InvalidArgument,
        r"attribute value of message 1 is not valid UTF-8",
        id="arrow attribute value not UTF-8",
    ),
    pytest.param(
        arrow(pa.table({"body": NOT_UTF8})),
        InvalidArgument,
        r"body 0 is in a str column but is not valid UTF-8",
        id="arrow str body not UTF-8",
    ),
    pytest.param(
        arrow(pa.Table.from_arrays([pa.array([b"a"]), pa.array([b"b"])], names=["body", "body"])),
        InvalidArgument,
        r"the table has 2 columns named 'body'",
        id="arrow duplicate body",
    ),
    pytest.param(
        arrow(pa.Table.from_arrays([pa.array([b"a"]), pa.array(["k"]), pa.array(["k"])], names=["body", "key", "key"])),
        InvalidArgument,
        r"2 columns named 'key'",
        id="arrow duplicate key",
    ),
    pytest.param(
        arrow(pa.table({"body": [b"a"], "key": [1]})),
        InvalidArgument,
        r"column 'key' has type int64",
        id="arrow key int",
    ),
    pytest.param(arrow(pa.array([b"a", None])), InvalidArgument, r"body 1 is null", id="arrow null body"),
    pytest.param(
        arrow(large_binary([(1 << 31) + 10])),
        MessageTooLarge,
        r"message 0 for queue 'orders' is 2147483658 bytes",
        id="arrow large_binary body over 2 GiB",
    ),
    # ---- receipts
    pytest.param(
        lambda: receipt_column(["0.1.2.3", "\udcff"]),
        InvalidReceipt,
        r"invalid receipt .*malformed",
        id="delete_batch surrogate",
    ),
    pytest.param(
        lambda: first_call(handle()._delete_plan(["\ud800"])), InvalidReceipt, r"malformed", id="delete surrogate"
    ),
    pytest.param(
        lambda: decode_receipt("\ud800.1.2.3"), InvalidReceipt, r"malformed", id="change_visibility surrogate"
    ),
    pytest.param(
        lambda: decode_receipt("9" * 50_000_000), InvalidReceipt, r"invalid receipt '9+\.\.\.", id="50 MB receipt"
    ),
    pytest.param(
        lambda: first_call(handle()._delete_plan(["1" * 10_001])),
        InvalidReceipt,
        r"malformed",
        id="long receipt in delete_batch",
    ),
    pytest.param(
        lambda: first_call(handle()._delete_plan([GOOD_RECEIPT] * 10_001)),
        InvalidArgument,
        r"a batch \(10001 messages\)",
        id="delete_batch 10001",
    ),
]


@pytest.mark.parametrize(("call", "error", "pattern"), ROWS)
def test_bad_input_gives_a_named_error_that_says_what_is_wrong(
    call: Callable[[], Any], error: type[RayQueueError], pattern: str
) -> None:
    with pytest.raises(error, match=pattern) as caught:
        call()

    assert type(caught.value) is error
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400  # one readable line


# ----------------------------------------------------- what is accepted stays accepted


ACCEPTED = [
    pytest.param(
        lambda: build(partition_num_cpus=0.5, partition_resources={"rayqueue_partition": 0.0001}),
        id="resources in ten-thousandths",
    ),
    pytest.param(lambda: build(partition_num_cpus=0.3, partition_resources={"x": 0.3}), id="0.3 (not exact in binary)"),
    pytest.param(lambda: build(target_send_rate=defaults.MIN_TARGET_SEND_RATE), id="lowest send rate"),
    pytest.param(lambda: build(max_messages=4, partitions=4), id="a share of 1 per partition"),
    pytest.param(lambda: first_call(handle()._receive_plan(10_000, 20, 0)), id="receive at its limits"),
    pytest.param(lambda: BufferedConsumer(handle(), flush_interval_s=0), id="flush at once"),
    pytest.param(
        arrow(pa.table({"body": [b"a"], "key": ["k" * 256], "extra": [1]})), id="arrow key of 256, extra column"
    ),
    pytest.param(
        arrow(with_attributes([(str(i), "v" * 4096) for i in range(10)])), id="arrow 10 attributes at the limit"
    ),
    pytest.param(arrow(with_attributes([("k", "")])), id="arrow empty attribute value"),
    pytest.param(arrow(with_attributes(pa.array([None, []], MAP))), id="arrow no attributes"),
    pytest.param(arrow(pa.table({"body": pa.array(["héllo"], pa.large_string())})), id="arrow large_string body"),
    pytest.param(
        lambda: send_rows(CONFIG, [memoryview(b"abcdef")[::2], np.bytes_(b"ab"), b""], IDS.take(3)),
        id="odd bytes-like bodies",
    ),
]


@pytest.mark.parametrize("call", ACCEPTED)
def test_good_input_is_accepted(call: Callable[[], Any]) -> None:
    call()


def test_arrow_rows_keep_keys_and_attributes_as_sent() -> None:
    table = pa.table(
        {
            "body": [b"a", b"b"],
            "key": pa.array([None, "k"], pa.large_string()),
            "attributes": pa.array([[("x", "1")], None], MAP),
        }
    )

    rows = send_rows_from_arrow(CONFIG, table, IDS.take_array(2))

    assert rows.column("key").to_pylist() == [None, "k"]
    assert rows.column("attributes").to_pylist() == [[("x", "1")], None]
    rows.validate(full=True)


def test_a_sliced_attributes_column_names_the_row_of_the_slice() -> None:
    # Arrow keeps a sliced map's entries unsliced underneath: the row named must be the
    # row of what was sent, not of the array it was cut from.
    column = pa.array([[("k", "v" * 5000)], [("a", "1")], [("k", "v" * 5000)]], MAP).slice(1)

    with pytest.raises(InvalidArgument, match=r"attribute value of message 1 "):
        arrow(with_attributes(column))()


def test_a_large_binary_batch_over_2_gib_of_small_bodies_is_refused_by_size_not_by_arrow() -> None:
    config = QueueConfig.build(name="orders", max_messages=1000, max_message_bytes=defaults.MAX_MESSAGE_BYTES_LIMIT)
    bodies = large_binary([defaults.MAX_MESSAGE_BYTES_LIMIT] * 130)  # 2,080 MiB in all

    with pytest.raises(InvalidArgument, match=r"a batch \(2181038080 bytes\) must hold at most 67108864 bytes"):
        send_rows_from_arrow(config, bodies, IDS.take_array(len(bodies)))


# ------------------------------------------------------------------- validation


@pytest.mark.parametrize("value", [0, 10_001, True, 1.0, "5", None, np.int64(5), 10**400, math.nan])
def test_a_count_is_a_strict_int_within_its_bounds(value: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"^n \(.*\) must be an int from 1 to 10,000$"):
        check("n", value, count(1, 10_000))


@pytest.mark.parametrize("value", [-0.1, 20.5, math.nan, math.inf, -math.inf, "1", True, None, 10**400])
def test_a_number_is_finite_within_its_bounds(value: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"^s \(.*\) must be a number from 0 to 20$"):
        check("s", value, number(0.0, 20.0))


def test_a_rule_gives_back_the_value() -> None:
    assert check("n", 7, count(1, 10)) == 7
    assert check("s", 3, number(0.0, 5.0)) == 3.0


# ---------------------------------------------------------------- scaling (S14)


def test_a_tiny_send_rate_target_does_not_stop_scaling() -> None:
    # A policy the config no longer allows (as from an older catalog): decide() must
    # still answer, or the coordinator's loop would stop for the queues after it.
    policy = ScalingPolicy(min_partitions=1, max_partitions=4, target_send_rate=5e-324, window_s=30, cooldown_s=0)
    history = [LoadSample(at=float(t), send_rate=10.0, backlog=0) for t in range(0, 40, 5)]

    assert decide(history, current=1, policy=policy, now=35.0, last_change=-1000.0) == 4


def test_samples_without_a_rate_say_nothing() -> None:
    policy = ScalingPolicy(min_partitions=1, max_partitions=4, window_s=30, cooldown_s=0)
    history = [LoadSample(at=float(t), send_rate=math.nan, backlog=0) for t in range(0, 40, 5)]

    assert decide(history, current=2, policy=policy, now=35.0, last_change=-1000.0) == 2


# ---------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["receive", "q", "--wait", "nan"], r"--wait \(nan\) must be a number from 0 to 20"),
        (["receive", "q", "--visibility-timeout", "inf"], r"--visibility-timeout \(inf\) must be a number"),
        (["send", "q", "x", "--batch", "10001"], r"--batch \(10001\) must be an int from 1 to 10,000"),
        (["top", "--interval", "1e300"], r"--interval \(1e\+300\) must be a number above 0 and at most 3600"),
        (["create", "q", "--max-messages", "1", "--partitions", "2"], r"max_messages \(1\) must be at least"),
    ],
)
def test_the_cli_refuses_bad_values_before_ray(argv: list[str], pattern: str, capsys: pytest.CaptureFixture[str]):
    assert cli.main(argv) == cli.EXIT_USAGE
    assert re.search(pattern, capsys.readouterr().err)


def test_rayqueue_receive_escapes_message_ids() -> None:
    message = {
        "id": "evil\x1b[2J\x1b]0;owned\x07",
        "receive_count": 1,
        "receipt": GOOD_RECEIPT,
        "body": "b",
        "body_base64": "Yg==",
    }

    shown = cli.format_receive({"queue": "q", "messages": [message], "deleted": False})

    assert "\x1b" not in shown and "\x07" not in shown
    assert r"evil\x1b[2J\x1b]0;owned\x07" in shown


def test_a_plan_that_passes_its_checks_yields_its_first_call() -> None:
    # The rows above that expect no error rely on this: a plan's checks come first.
    assert isinstance(first_call(handle()._receive_plan(1, 0.0, None)), Calls)
