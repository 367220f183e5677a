"""How long a partition takes to recover, and how many objects it reads, after a long history.

    python jobs/recovery.py                              # 1,000,000 messages, 90 % deleted, file://
    python jobs/recovery.py --messages 100000 --storage s3://bucket/prefix \
        --storage-options '{"key": "...", "secret": "...", "client_kwargs": {"endpoint_url": "..."}}'

It drives one partition directly (no Ray: the figures are the storage and the
partition logic alone), sends the messages in batches, receives and deletes
the oldest ``--deleted`` fraction, lets checkpoints run as they do in service,
then times a takeover by a new leader, as after a crash, and checks that
exactly the undeleted messages are back. Also prints the storage requests per
1,000 messages sent and deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time

from rayqueue.client.rows import IdSource, send_rows
from rayqueue.config import QueueConfig
from rayqueue.partition.service import PartitionService
from rayqueue.storage import PartitionStore
from rayqueue.storage.counting import CountingStore


async def fill_and_drain(service: PartitionService, config: QueueConfig, args: argparse.Namespace) -> None:
    ids = IdSource()
    body = b"x" * args.size
    to_delete = int(args.messages * args.deleted)
    sent = deleted = 0
    started = time.monotonic()
    while sent < args.messages:
        n = min(args.batch, args.messages - sent)
        await service.send(send_rows(config, [body] * n, ids.take(n)), dedup=False)
        sent += n
        # Consume as we go, like a real consumer trailing the producers.
        while deleted < min(to_delete, sent - args.batch * 2 if sent < args.messages else to_delete):
            delivery = await service.receive(min(args.batch, to_delete - deleted), 0.0, None)
            offsets, tokens = delivery.column("offset").to_numpy(), delivery.column("token").to_numpy()
            await service.delete(offsets, tokens, [])
            deleted += delivery.num_rows
        if sent % (args.messages // 10 or 1) < n:
            print(f"  sent {sent:>10,}  deleted {deleted:>10,}  {time.monotonic() - started:6.1f}s", flush=True)
    if service._checkpointing is not None:
        await service._checkpointing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--deleted", type=float, default=0.9, help="fraction deleted, oldest first")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--storage", default=None, help="fsspec URL (default: a fresh temporary directory)")
    parser.add_argument("--storage-options", default="{}", help="JSON of fsspec storage options")
    args = parser.parse_args(argv)
    url = args.storage or "file://" + tempfile.mkdtemp(prefix="rayqueue-recovery-")
    options = json.loads(args.storage_options)
    config = QueueConfig.build(name="recovery", max_messages=args.messages, max_message_bytes=args.size)

    store = CountingStore(url, options)
    service = PartitionService(config, 0, PartitionStore(store, config.name, 0, "u"))
    service.recover()
    print(f"filling {url}: {args.messages:,} messages of {args.size} B, deleting {args.deleted:.0%}", flush=True)
    asyncio.run(fill_and_drain(service, config, args))
    work = dict(store.requests)
    per_1000 = {kind: round(count / args.messages * 1000, 1) for kind, count in sorted(work.items())}

    reader = CountingStore(url, options)
    started = time.monotonic()
    recovered = PartitionService(config, 0, PartitionStore(reader, config.name, 0, "u"))
    recovered.recover()
    seconds = time.monotonic() - started
    stats = recovered.stats()
    expected = args.messages - int(args.messages * args.deleted)
    summary = {
        "messages": args.messages,
        "deleted": int(args.messages * args.deleted),
        "recovery_seconds": round(seconds, 3),
        "objects_read": recovered.objects_recovered,
        "recovery_requests": dict(reader.requests),
        "visible_after_recovery": stats.visible,
        "requests_per_1000_sent_and_deleted": per_1000,
    }
    print(json.dumps(summary, indent=1))
    if stats.visible != expected:
        print(f"FAILED: expected {expected} messages back, found {stats.visible}")
        return 1
    print("OK: exactly the undeleted messages are back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
