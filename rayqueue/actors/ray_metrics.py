"""Partition metrics through ``ray.util.metrics``: Prometheus names ``ray_rayqueue_*``."""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

_TAGS = ("queue", "partition")


class RayPartitionMetrics:
    def __init__(self, queue: str, partition: int) -> None:
        tags = {"queue": queue, "partition": str(partition)}

        def counter(name: str, description: str) -> Counter:
            metric = Counter(f"rayqueue_{name}", description=description, tag_keys=_TAGS)
            metric.set_default_tags(tags)
            return metric

        def gauge(name: str, description: str) -> Gauge:
            metric = Gauge(f"rayqueue_{name}", description=description, tag_keys=_TAGS)
            metric.set_default_tags(tags)
            return metric

        self._sent = counter("messages_sent", "Messages stored by sends.")
        self._sent_bytes = counter("bytes_sent", "Body bytes stored by sends.")
        self._received = counter("messages_received", "Messages handed out by receives.")
        self._redelivered = counter("messages_redelivered", "Messages handed out again after a visibility timeout.")
        self._deleted = counter("messages_deleted", "Messages deleted for good.")
        self._visible = gauge("messages_visible", "Messages a receive would hand out now.")
        self._in_flight = gauge("messages_in_flight", "Messages handed out and not yet deleted or visible again.")
        self._stored_bytes = gauge("stored_bytes", "Body bytes stored and not deleted.")
        self._write_seconds = Histogram(
            "rayqueue_storage_write_seconds",
            description="Time to store one segment or delete log.",
            boundaries=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            tag_keys=_TAGS,
        )
        self._write_seconds.set_default_tags(tags)

    def sent(self, messages: int, body_bytes: int) -> None:
        self._sent.inc(messages)
        self._sent_bytes.inc(body_bytes)

    def received(self, messages: int, redelivered: int) -> None:
        if messages:  # Ray's counters refuse increments of zero
            self._received.inc(messages)
        if redelivered:
            self._redelivered.inc(redelivered)

    def deleted(self, messages: int) -> None:
        if messages:
            self._deleted.inc(messages)

    def storage_write(self, seconds: float) -> None:
        self._write_seconds.observe(seconds)

    def state(self, visible: int, in_flight: int, stored_bytes: int) -> None:
        self._visible.set(visible)
        self._in_flight.set(in_flight)
        self._stored_bytes.set(stored_bytes)
