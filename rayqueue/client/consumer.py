"""An opt-in consumer that prefetches messages and batches its deletes.

For one-message-at-a-time processing, a plain ``receive`` + ``delete`` costs two
round trips per message. Like the SQS buffered client and RabbitMQ's prefetch,
``BufferedConsumer`` receives ``prefetch`` messages at a time and hands them out
one by one, and sends deletes in batches. What that changes, and the README says:

- A prefetched message is in flight from the moment it is fetched: its
  visibility timeout runs while it waits in the buffer.
- A buffered delete is not durable until it is flushed: when ``delete_batch``
  deletes are pending, when ``flush_interval_s`` has passed at the next call,
  on ``flush()`` and on ``close()`` (also at the end of a ``with`` block). If the
  consumer dies first, those messages come back after their visibility timeout
  (delivery stays at least once).
"""

from __future__ import annotations

import time
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

from rayqueue import defaults
from rayqueue.message import Message
from rayqueue.validation import check, count, number

if TYPE_CHECKING:
    from rayqueue.client.queue import Queue


class BufferedConsumer:
    def __init__(
        self,
        queue: Queue,
        *,
        prefetch: int = 10,
        delete_batch: int = 10,
        flush_interval_s: float = 0.1,
        visibility_timeout_s: float | None = None,
    ) -> None:
        # Checked here, not at the first receive or flush, where a bad value would
        # surface far from the line that passed it.
        check("prefetch", prefetch, count(1, defaults.MAX_BATCH_MESSAGES))
        check("delete_batch", delete_batch, count(1, defaults.MAX_BATCH_MESSAGES))
        check("flush_interval_s", flush_interval_s, number(0.0, defaults.MAX_VISIBILITY_TIMEOUT_S))
        if visibility_timeout_s is not None:
            check("visibility_timeout_s", visibility_timeout_s, number(0.0, defaults.MAX_VISIBILITY_TIMEOUT_S))
        self._queue = queue
        self._prefetch = prefetch
        self._delete_batch = delete_batch
        self._flush_interval_s = flush_interval_s
        self._visibility_timeout_s = visibility_timeout_s
        self._buffer: deque[Message] = deque()
        self._deletes: list[str] = []
        self._oldest_delete = 0.0

    def receive(self, wait_s: float = 0.0) -> Message | None:
        """The next message (from the buffer, refilled with one call when empty), or
        None if none arrived within ``wait_s``."""
        self._flush_if_due()
        if not self._buffer:
            self._buffer.extend(
                self._queue.receive(self._prefetch, wait_s=wait_s, visibility_timeout_s=self._visibility_timeout_s)
            )
        return self._buffer.popleft() if self._buffer else None

    def delete(self, receipt: str) -> None:
        """Delete once the batch is flushed (see the module's docstring)."""
        if not self._deletes:
            self._oldest_delete = time.monotonic()
        self._deletes.append(receipt)
        if len(self._deletes) >= self._delete_batch:
            self.flush()
        else:
            self._flush_if_due()

    def flush(self) -> None:
        """Make every buffered delete durable now."""
        if self._deletes:
            pending, self._deletes = self._deletes, []
            self._queue.delete_batch(pending)

    def _flush_if_due(self) -> None:
        if self._deletes and time.monotonic() - self._oldest_delete >= self._flush_interval_s:
            self.flush()

    def close(self) -> None:
        """Flush the deletes and give unreturned prefetched messages back at once."""
        self.flush()
        while self._buffer:
            self._queue.change_visibility(self._buffer.popleft().receipt, 0)

    def __enter__(self) -> BufferedConsumer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
