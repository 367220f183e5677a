"""Ray Data and rayqueue: write a Dataset into a queue, read a queue as a Dataset.

    from rayqueue.data import write_dataset, consume_dataset

    write_dataset(queue, ray.data.read_parquet("s3://bucket/events"), column="payload")
    report = consume_dataset(queue, handle_batch, max_messages=100_000)
    assert report.failed == 0, report.errors

Delivery stays at least once, as everywhere in rayqueue:

- ``write_dataset`` sends each row's column value once per successful Ray task;
  if Ray retries a task (a worker died mid-write), rows that task had already
  sent are sent again, with new message ids.
- ``consume_dataset`` (the path to use) hands each received batch to ``fn`` in a
  Ray task and deletes that batch's messages only after ``fn`` returned. A batch
  whose ``fn`` raised, or whose task died, is not deleted: its messages come back
  after the visibility timeout, with ``receive_count`` raised.
- ``read_dataset`` gives the received messages as a lazy Dataset and deletes
  nothing: the caller must delete them with :func:`delete_batch` once done, or
  they come back after the visibility timeout. Each execution of that Dataset
  receives anew (iterating it twice receives other messages).

Only rayqueue's public API is used here: a ``Queue`` handle pickles into tasks.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from rayqueue import defaults
from rayqueue.client.queue import Queue
from rayqueue.client.rows import batches
from rayqueue.errors import InvalidArgument, RayQueueError
from rayqueue.message import Message
from rayqueue.validation import check, count, number

#: Messages per send_batch from write_dataset, and per block read by read_dataset.
BATCH_SIZE = 1000
#: A rayqueue call takes at most 10,000 messages (and 64 MiB of bodies: see rows.batches).
MAX_CALL_MESSAGES = defaults.MAX_BATCH_MESSAGES
#: Receive tasks that read_dataset runs in parallel.
READERS = 2
#: How long a reader waits for its first message before it gives up.
WAIT_S = 1.0

#: The columns of a Dataset read from a queue.
MESSAGE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("body", pa.binary()),
        ("receive_count", pa.int64()),
        ("sent_at", pa.float64()),
        ("receipt", pa.string()),
    ]
)


# ------------------------------------------------------------------ writing


def write_dataset(
    queue: Queue,
    dataset: ray.data.Dataset,
    column: str = "body",
    *,
    batch_size: int = BATCH_SIZE,
    concurrency: int | None = None,
) -> int:
    """Send every row's ``column`` value (bytes or str) to ``queue``; return how many were sent.

    Rows are sent from parallel Ray tasks (``map_batches``), ``batch_size`` rows
    per ``send_batch``; each call is durable when it returns. Blocks on the
    whole dataset. Raises the ``RayQueueError`` a task met (``QueueFull``,
    ``MessageTooLarge``, ``InvalidArgument`` for a missing column or a null
    value); rows of batches sent before it stay in the queue. A task that Ray
    retries may send some rows twice (at least once, never lost).
    """
    _check_batch_size(batch_size)
    outcomes = dataset.map_batches(
        _Sender(queue, column, batch_size),
        batch_format="pyarrow",
        batch_size=batch_size,
        concurrency=concurrency,
    )
    rows = outcomes.take_all()
    sent = sum(row["sent"] for row in rows)
    errors = [pickle.loads(row["error"]) for row in rows if row["error"]]
    if errors:
        errors[0].add_note(f"{sent} rows were sent; {len(errors)} batches failed")
        raise errors[0]
    return sent


class _Sender:
    """The map_batches function of write_dataset: one Arrow batch in, its count out.

    A rayqueue error is returned, not raised: Ray Data would wrap it in its own
    exception and lose the error's type and fields on the way to the caller.
    """

    def __init__(self, queue: Queue, column: str, batch_size: int) -> None:
        self.queue, self.column, self.batch_size = queue, column, batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        sent = 0
        try:
            if self.column not in batch.column_names:
                raise InvalidArgument(f"the dataset has no column {self.column!r} (columns: {batch.column_names})")
            for chunk in batches(batch.column(self.column).to_pylist(), self.batch_size):
                self.queue.send_batch(chunk)
                sent += len(chunk)
        except RayQueueError as error:
            return pa.table({"sent": [sent], "error": [pickle.dumps(error)]})
        return pa.table({"sent": [sent], "error": pa.array([None], pa.binary())})


def read_dataset(
    queue: Queue,
    max_messages: int,
    *,
    wait_s: float = WAIT_S,
    batch_size: int = BATCH_SIZE,
    readers: int = READERS,
    visibility_timeout_s: float | None = None,
) -> ray.data.Dataset:
    """A lazy Dataset of up to ``max_messages`` messages received from ``queue``.

    Columns: ``id``, ``body`` (binary), ``receive_count``, ``sent_at`` (seconds
    since the Unix epoch) and ``receipt``. ``readers`` Ray tasks receive in
    parallel, one block per receive of up to ``batch_size``; a reader stops at
    its share of ``max_messages`` or when a receive finds nothing within
    ``wait_s``. Receiving happens when the Dataset executes, not here.

    Nothing is deleted: every message is in flight from its receive until the
    visibility timeout (the queue's, or ``visibility_timeout_s``), and comes
    back unless deleted before then with :func:`delete_batch`. Prefer
    :func:`consume_dataset`, which deletes each batch once its work succeeded.
    """
    # All checked here: inside Ray Data's read tasks a bad value would surface only
    # once the Dataset runs, wrapped in Ray Data's own error.
    _check_batch_size(batch_size)
    check("max_messages", max_messages, count(1, defaults.MAX_READ_MESSAGES))
    check("readers", readers, count(1, defaults.MAX_READ_MESSAGES))  # more readers than messages are not started
    check("wait_s", wait_s, number(0.0, defaults.MAX_WAIT_S))
    if visibility_timeout_s is not None:
        check("visibility_timeout_s", visibility_timeout_s, number(0.0, defaults.MAX_VISIBILITY_TIMEOUT_S))
    source = QueueDatasource(queue, max_messages, wait_s, batch_size, readers, visibility_timeout_s)
    return ray.data.read_datasource(source, override_num_blocks=source.tasks)


def delete_batch(queue: Queue, batch: Any) -> int:
    """Delete the messages of ``batch`` (anything with a ``receipt`` column); return how many.

    Raises ``InvalidReceipt`` if a message's visibility timeout ran out before
    this call (it was, or will be, delivered again); then none of that
    partition's messages in the batch are deleted.
    """
    receipts = _receipts(batch)
    for start in range(0, len(receipts), MAX_CALL_MESSAGES):
        queue.delete_batch(receipts[start : start + MAX_CALL_MESSAGES])
    return len(receipts)


class QueueDatasource(Datasource):
    """Ray Data's view of a queue: read tasks that receive, one block per receive."""

    def __init__(
        self,
        queue: Queue,
        max_messages: int,
        wait_s: float,
        batch_size: int,
        readers: int,
        visibility_timeout_s: float | None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.queue = queue
        self.max_messages = max_messages
        self.wait_s = wait_s
        self.batch_size = batch_size
        self.visibility_timeout_s = visibility_timeout_s
        self.tasks = min(readers, math.ceil(max_messages / batch_size))

    def get_name(self) -> str:
        return f"RayQueue({self.queue.name})"

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # unknown until received

    def get_read_tasks(self, parallelism: int, *_: Any, **__: Any) -> list[ReadTask]:
        # ``parallelism`` is Ray Data's guess for files; a queue reads best with few pollers.
        shares = [self.max_messages // self.tasks + (i < self.max_messages % self.tasks) for i in range(self.tasks)]
        metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(self._reader(share), metadata, schema=MESSAGE_SCHEMA) for share in shares]

    def _reader(self, share: int) -> Callable[[], Iterator[pa.Table]]:
        queue, wait_s, batch_size, visibility_s = self.queue, self.wait_s, self.batch_size, self.visibility_timeout_s

        def read() -> Iterator[pa.Table]:
            left = share
            while left > 0:
                messages = queue.receive(min(batch_size, left), wait_s=wait_s, visibility_timeout_s=visibility_s)
                if not messages:
                    return
                left -= len(messages)
                yield messages_table(messages)

        return read


def messages_table(messages: list[Message]) -> pa.Table:
    """Received messages as an Arrow table of ``MESSAGE_SCHEMA``."""
    return pa.table(
        {
            "id": [m.id for m in messages],
            "body": [m.body for m in messages],
            "receive_count": [m.receive_count for m in messages],
            "sent_at": [m.sent_at for m in messages],
            "receipt": [m.receipt for m in messages],
        },
        schema=MESSAGE_SCHEMA,
    )


# ---------------------------------------------------------------- consuming


@dataclass
class ConsumeReport:
    """What ``consume_dataset`` did. ``failed`` messages were not deleted and will come back."""

    batches: int = 0
    #: Messages whose batch's ``fn`` returned and which were then deleted.
    processed: int = 0
    #: Messages left in the queue: their ``fn`` raised, or their delete came too late.
    failed: int = 0
    #: One line per failed batch: what went wrong.
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0


def consume_dataset(
    queue: Queue,
    fn: Callable[[Any], Any],
    *,
    max_messages: int,
    wait_s: float = WAIT_S,
    batch_size: int = BATCH_SIZE,
    readers: int = READERS,
    visibility_timeout_s: float | None = None,
    batch_format: str = "pyarrow",
) -> ConsumeReport:
    """Receive up to ``max_messages``, apply ``fn`` to each batch in Ray tasks, delete on success.

    ``fn`` gets one batch (columns as in :func:`read_dataset`, in
    ``batch_format``: ``"pyarrow"``, ``"pandas"`` or ``"numpy"``); its return
    value is ignored. A batch's messages are deleted only after ``fn`` returned;
    if ``fn`` raises, that batch is left alone and its messages come back after
    the visibility timeout (at least once). Failures do not stop other batches:
    they are counted in the returned report, with their errors. ``fn`` must
    finish within the visibility timeout, or the delete is refused and the
    batch counts as failed (its messages were, or will be, delivered again).
    """
    dataset = read_dataset(
        queue,
        max_messages,
        wait_s=wait_s,
        batch_size=batch_size,
        readers=readers,
        visibility_timeout_s=visibility_timeout_s,
    )
    outcomes = dataset.map_batches(
        _ProcessThenDelete(queue, fn), batch_format=batch_format, batch_size=batch_size, zero_copy_batch=False
    )
    return _report(outcomes.take_all())


class _ProcessThenDelete:
    """The map_batches function of consume_dataset: run ``fn``, then delete, report either way."""

    def __init__(self, queue: Queue, fn: Callable[[Any], Any]) -> None:
        self.queue, self.fn = queue, fn

    def __call__(self, batch: Any) -> pa.Table:
        receipts = _receipts(batch)  # before fn, which may change the batch
        try:
            self.fn(batch)
        except Exception as error:  # noqa: BLE001 - any failure of fn: leave the batch for redelivery
            return _outcome(0, len(receipts), f"fn raised {type(error).__name__}: {error}")
        try:
            delete_batch(self.queue, {"receipt": receipts})
        except RayQueueError as error:
            return _outcome(0, len(receipts), f"delete after fn failed: {error}")
        return _outcome(len(receipts), 0, "")


def _outcome(processed: int, failed: int, error: str) -> pa.Table:
    return pa.table({"processed": [processed], "failed": [failed], "error": [error]})


def _report(rows: list[dict[str, Any]]) -> ConsumeReport:
    report = ConsumeReport(batches=len(rows))
    for row in rows:
        report.processed += row["processed"]
        report.failed += row["failed"]
        if row["error"]:
            report.errors.append(row["error"])
    return report


# ------------------------------------------------------------------ helpers


def _receipts(batch: Any) -> list[str]:
    """The ``receipt`` column of a pyarrow table, a pandas frame or a dict of arrays."""
    try:
        column = batch["receipt"]
    except (KeyError, TypeError):
        raise InvalidArgument("the batch has no 'receipt' column: keep it to delete the messages") from None
    values = column.to_pylist() if hasattr(column, "to_pylist") else list(column)
    return [str(value) for value in values]


def _check_batch_size(batch_size: int) -> None:
    check("batch_size", batch_size, count(1, MAX_CALL_MESSAGES))
