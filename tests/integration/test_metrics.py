"""Partition metrics reach Ray's metrics export (what Prometheus and the dashboard read)."""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import ray

import rayqueue


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """``{"metric{queue=...}": value}`` for rayqueue's metrics, tags reduced to queue and partition."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"(ray_rayqueue_\w+)\{(.*)\} ([0-9.e+-]+)$", line)
        if match:
            tags = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            key = f"{match.group(1)}{{queue={tags.get('queue')},partition={tags.get('partition')}}}"
            values[key] = values.get(key, 0.0) + float(match.group(3))
    return values


def test_partition_metrics_are_exported(tmp_path, ray_starter):
    port = free_port()
    ray_starter("metrics", _metrics_export_port=port)
    try:
        queue = rayqueue.connect(storage=f"file://{tmp_path}", namespace="metrics").create_queue(
            "measured", max_messages=100, max_message_bytes=100, visibility_timeout_s=0
        )
        queue.send_batch([b"12345"] * 10)
        first = queue.receive(4)
        again = queue.receive(2)  # visibility 0: the first ones come straight back
        queue.delete_batch([m.receipt for m in again])
        time.sleep(1.1)
        queue.stats()  # refreshes the gauges

        def tag(name: str) -> str:
            return f"ray_rayqueue_{name}{{queue=measured,partition=0}}"

        expected = {
            tag("messages_sent_total"): 10,
            tag("bytes_sent_total"): 50,
            tag("messages_received_total"): len(first) + len(again),
            tag("messages_redelivered_total"): 2,
            tag("messages_deleted_total"): 2,
            tag("messages_visible"): 8,
            tag("stored_bytes"): 40,
        }
        deadline = time.monotonic() + 60
        while True:  # Ray exports metrics every few seconds
            found = scrape(port)
            if all(found.get(key) == value for key, value in expected.items()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert {key: found.get(key) for key in expected} == expected
        assert found.get(tag("storage_write_seconds_count"), 0) >= 2
    finally:
        ray.shutdown()
