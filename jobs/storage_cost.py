"""What sending and deleting costs on object storage: requests per 1,000 messages,
and send latency, at several batch sizes with concurrent producers and consumers.

    python jobs/storage_cost.py                           # file://, batch sizes 1, 10, 1000
    python jobs/storage_cost.py --storage s3://bucket/prefix --storage-options '{...}'

It drives one partition directly (no Ray: the figures are the storage path alone):
``--producers`` tasks send batches of the given size and ``--consumers`` tasks
receive and delete batches of that size, all at once, so group commit gets to
merge what arrives together. Requests are counted as the partition makes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from rayqueue.client.rows import IdSource, send_rows
from rayqueue.config import QueueConfig
from rayqueue.partition.service import PartitionService
from rayqueue.storage import PartitionStore
from rayqueue.storage.counting import CountingStore


async def workload(
    service: PartitionService, config: QueueConfig, batch: int, total: int, args: argparse.Namespace
) -> list[float]:
    ids, body, latencies = IdSource(), b"x" * args.size, []
    per_producer = total // args.producers // batch

    async def produce() -> None:
        for _ in range(per_producer):
            started = time.perf_counter()
            await service.send(send_rows(config, [body] * batch, ids.take(batch)), dedup=False)
            latencies.append(time.perf_counter() - started)

    deleted = 0

    async def consume() -> None:
        nonlocal deleted
        while deleted < per_producer * batch * args.producers:
            delivery = await service.receive(batch, 0.05, None)
            if delivery.num_rows:
                await service.delete(delivery.column("offset").to_numpy(), delivery.column("token").to_numpy(), [])
                deleted += delivery.num_rows

    await asyncio.gather(*(produce() for _ in range(args.producers)), *(consume() for _ in range(args.consumers)))
    return latencies


def measure(url: str, options: dict[str, Any], batch: int, args: argparse.Namespace) -> dict[str, Any]:
    total = args.messages if batch > 1 else args.messages // 10
    config = QueueConfig.build(name=f"cost-{uuid.uuid4().hex[:6]}", max_messages=total * 2, max_message_bytes=args.size)
    store = CountingStore(url, options)
    service = PartitionService(config, 0, PartitionStore(store, config.name, 0, "u"))
    service.recover()
    store.requests.clear()  # the takeover is not part of the workload
    started = time.perf_counter()
    latencies = asyncio.run(workload(service, config, batch, total, args))
    seconds = time.perf_counter() - started
    moved = len(latencies) * batch
    ordered = sorted(latencies)
    return {
        "batch": batch,
        "messages": moved,
        "requests_per_1000": {kind: round(n / moved * 1000, 2) for kind, n in sorted(store.requests.items())},
        "send_p50_ms": round(statistics.median(ordered) * 1e3, 2),
        "send_p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1e3, 2),
        "messages_per_s": round(moved / seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10, 1000])
    parser.add_argument("--messages", type=int, default=20_000, help="per batch size (a tenth for batch size 1)")
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--storage", default=None, help="fsspec URL (default: a fresh temporary directory)")
    parser.add_argument("--storage-options", default="{}", help="JSON of fsspec storage options")
    args = parser.parse_args(argv)
    url = args.storage or "file://" + tempfile.mkdtemp(prefix="rayqueue-cost-")
    rows = [measure(url, json.loads(args.storage_options), batch, args) for batch in args.batches]
    print(f"{'batch':>6} {'messages':>9} {'msg/s':>8} {'send p50 ms':>12} {'p99 ms':>8}  requests per 1,000 messages")
    for row in rows:
        print(
            f"{row['batch']:>6} {row['messages']:>9} {row['messages_per_s']:>8} {row['send_p50_ms']:>12} "
            f"{row['send_p99_ms']:>8}  {row['requests_per_1000']}"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
