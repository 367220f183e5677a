"""A partition process holds a backlog ten times its memory budget within the budget
plus a fixed overhead, and loses or reorders nothing.

Memory is the process's own (USS: unique set size). Its RSS also counts pages of
Ray's shared-memory object store that it mapped while reading call arguments;
those belong to the object store, whose size Ray bounds, not to the partition.
"""

from __future__ import annotations

import os

import psutil
import pyarrow as pa
import ray

BUDGET = 16 * 1024 * 1024
BODY = 64 * 1024
BATCH = 64  # 4 MiB per send
#: Besides the budget: one segment being written and one being read back, and what
#: the allocators keep (measured here: about 40 MiB).
FIXED_OVERHEAD = 64 * 1024 * 1024


def test_backlog_ten_times_the_budget_keeps_resident_memory_bounded(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=100_000, max_message_bytes=BODY, partition_memory_bytes=BUDGET)
    actor = queue._target.route.partitions[0]
    process = psutil.Process(ray.get(actor.__ray_call__.remote(lambda self: os.getpid())))
    # Warm up, so that the baseline includes the code every send and receive loads.
    queue.send_batch(pa.array([b"warm-up".ljust(BODY, b".")] * BATCH))
    queue.delete_batch(queue.receive_batch(BATCH).column("receipt"))
    baseline = process.memory_full_info().uss
    total = 10 * BUDGET // BODY
    peak = baseline
    for first in range(0, total, BATCH):
        queue.send_batch(pa.array([str(first + i).encode().ljust(BODY, b".") for i in range(BATCH)]))
        peak = max(peak, process.memory_full_info().uss)
    assert queue.stats().visible == total
    received = []
    while (table := queue.receive_batch(BATCH)).num_rows:
        received += [int(body.rstrip(b".")) for body in table.column("body").to_pylist()]
        queue.delete_batch(table.column("receipt"))
        peak = max(peak, process.memory_full_info().uss)
    assert received == list(range(total))
    growth = peak - baseline
    print(f"budget {BUDGET >> 20} MiB, backlog {total * BODY >> 20} MiB, USS {baseline >> 20} -> peak {peak >> 20} MiB")
    assert growth <= BUDGET + FIXED_OVERHEAD, f"the partition's own memory grew by {growth >> 20} MiB"
