"""Partitions grow with load and shrink back when it stops; nothing is lost or delivered
twice across the changes, and keys keep their order."""

from __future__ import annotations

import threading
import time

from support.waiting import wait_for

import rayqueue


def partitions_of(queue: rayqueue.Queue) -> int:
    return len(queue.stats().partitions)


def test_scale_out_under_load_and_back_in_when_idle(client, queue_name):
    queue = client.create_queue(
        queue_name,
        max_messages=100_000,
        max_message_bytes=100,
        partitions=1,
        min_partitions=1,
        max_partitions=3,
        target_send_rate=40.0,
        scaling_window_s=3.0,
        scaling_cooldown_s=3.0,
    )
    sent: list[str] = []
    keyed: dict[str, list[str]] = {"a": [], "b": []}
    delivered: list[rayqueue.Message] = []
    stop_producing, stop_consuming = threading.Event(), threading.Event()

    def produce() -> None:
        n = 0
        while not stop_producing.is_set():
            sent.extend(queue.send_batch([f"u{n}-{i}" for i in range(10)]))
            for key in keyed:
                keyed[key].append(queue.send(f"{key}{n}", key=key))
            n += 1
            time.sleep(0.05)

    def consume() -> None:
        while not stop_consuming.is_set():
            messages = queue.receive(50, wait_s=0.2)
            if messages:
                queue.delete_batch([m.receipt for m in messages])
                delivered.extend(messages)

    workers = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for worker in workers:
        worker.start()
    try:
        grew = wait_for(lambda: partitions_of(queue) >= 2, 60)
        stop_producing.set()
        shrank = wait_for(lambda: partitions_of(queue) == 1, 90)
    finally:
        stop_producing.set()
        stop_consuming.set()
        for worker in workers:
            worker.join()
    while batch := queue.receive(100):
        queue.delete_batch([m.receipt for m in batch])
        delivered.extend(batch)
    assert grew, "the queue never grew under load"
    assert shrank, "the queue never shrank back once idle"
    ids = [m.id for m in delivered]
    acknowledged = set(sent) | {i for ids_ in keyed.values() for i in ids_}
    assert acknowledged - set(ids) == set()  # nothing lost
    assert len(ids) == len(set(ids))  # nothing delivered twice
    for key, expected in keyed.items():
        assert [m.id for m in delivered if m.key == key] == expected  # order per key
