"""Consumer job: process a queue's messages in parallel Ray tasks, deleting each on success.

    python jobs/consumer.py --queue pipeline --workers 4
    ray job submit -- python jobs/consumer.py --queue pipeline --workers 8 --storage s3://bucket/rq

``--workers`` Ray tasks each receive up to ``--batch`` messages at a time,
process them one by one and delete, in one call, those whose processing
succeeded. A message whose processing raised is not deleted: it comes back after
the queue's visibility timeout (at least once). A worker stops when the queue
stays empty for ``--idle-s`` seconds. The processing here checks the body the
producer job wrote (``"<row>:"`` and padding) and hashes it; ``--work-ms``
adds simulated work per message. Progress goes to standard output every few
seconds; the summary comes last (one line of JSON with ``--json``). The exit
code is 1 if any message failed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import ray
from summary import print_summary

import rayqueue

#: Seconds between progress lines.
PROGRESS_EVERY_S = 2.0


@dataclass
class Tally:
    """What one worker did."""

    processed: int = 0
    failed: int = 0
    bytes: int = 0
    rows: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queue", default="pipeline", help="queue name (default: pipeline)")
    parser.add_argument("--workers", type=int, default=2, help="parallel Ray tasks (default 2)")
    parser.add_argument("--batch", type=int, default=500, help="messages per receive (default 500)")
    parser.add_argument("--idle-s", type=float, default=2.0, help="stop after the queue is empty this long")
    parser.add_argument("--work-ms", type=float, default=0.0, help="simulated work per message (default 0)")
    parser.add_argument("--storage", default=None, help="fsspec URL (default: RAYQUEUE_STORAGE or ~/.rayqueue)")
    parser.add_argument("--delete-queue", action="store_true", help="delete the queue when done")
    parser.add_argument("--json", action="store_true", help="print the summary as one line of JSON")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.batch < 1 or args.idle_s < 0:
        parser.error("--workers and --batch must be at least 1, --idle-s at least 0")
    return args


def process(body: bytes, work_s: float) -> int:
    """The work on one message: check it, hash it; return its row number. Raises if malformed."""
    row, sep, _ = body.partition(b":")
    if not sep or not row.isdigit():
        raise ValueError(f"not a producer message: {body[:40]!r}")
    hashlib.sha256(body).digest()
    if work_s:
        time.sleep(work_s)
    return int(row)


@ray.remote(num_cpus=1)
def worker(queue: rayqueue.Queue, batch: int, idle_s: float, work_s: float) -> Tally:
    """Receive, process and delete until a receive waits ``idle_s`` for nothing."""
    tally = Tally()
    while messages := queue.receive(batch, wait_s=min(idle_s, 20.0)):
        done = []
        for message in messages:
            try:
                tally.rows.append(process(message.body, work_s))
            except Exception as error:  # noqa: BLE001 - any failure: leave it for redelivery
                tally.failed += 1
                tally.errors.append(f"{message.id}: {error}")
                continue
            done.append(message.receipt)
            tally.bytes += len(message.body)
        if done:
            queue.delete_batch(done)
            tally.processed += len(done)
    return tally


def report_progress(queue: rayqueue.Queue, stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.wait(PROGRESS_EVERY_S):
        try:
            stats = queue.stats()
        except Exception:  # noqa: BLE001 - progress is best effort; the job's own calls report failures
            continue
        print(
            f"  {time.monotonic() - started:6.1f}s  visible {stats.visible:>10,}  in flight {stats.in_flight:>7,}",
            flush=True,
        )


def consume(queue: rayqueue.Queue, args: argparse.Namespace) -> dict[str, Any]:
    stop = threading.Event()
    progress = threading.Thread(target=report_progress, args=(queue, stop), daemon=True)
    progress.start()
    started = time.monotonic()
    try:
        tallies = ray.get(
            [worker.remote(queue, args.batch, args.idle_s, args.work_ms / 1000) for _ in range(args.workers)]
        )
    finally:
        stop.set()
        progress.join()
    seconds = max(time.monotonic() - started - args.idle_s, 1e-9)  # less the final idle wait
    return summarize(queue, tallies, seconds)


def summarize(queue: rayqueue.Queue, tallies: list[Tally], seconds: float) -> dict[str, Any]:
    rows = [row for tally in tallies for row in tally.rows]
    processed = sum(tally.processed for tally in tallies)
    stats = queue.stats()
    return {
        "queue": queue.name,
        "messages_processed": processed,
        "distinct_rows": len(set(rows)),
        "processed_twice": len(rows) - len(set(rows)),
        "failed": sum(tally.failed for tally in tallies),
        "errors": [error for tally in tallies for error in tally.errors][:5],
        "left_in_queue": stats.stored,
        "seconds": round(seconds, 3),
        "messages_per_s": round(processed / seconds),
        "mb_per_s": round(sum(tally.bytes for tally in tallies) / seconds / 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_ray = not ray.is_initialized()
    try:
        client = rayqueue.connect(storage=args.storage)
        queue = client.get_queue(args.queue)
        print(f"consuming {queue.name!r} with {args.workers} workers", flush=True)
        summary = consume(queue, args)
        if args.delete_queue:
            client.delete_queue(queue.name)
    except BaseException as error:  # noqa: BLE001 - report any failure, then shut down
        traceback.print_exc()
        print(f"consumer: error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()  # consume() joined its thread first
    print_summary(summary, args.json)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
