"""The direct channel between handles and partitions, and its fallback through Ray."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace

import pytest
import ray

from rayqueue import defaults
from rayqueue.transport.direct import TRANSPORT


def round_trip(queue) -> list[bytes]:
    queue.send_batch([b"a", b"b"])
    queue.send(b"c")
    messages = queue.receive(10)
    queue.delete_batch([m.receipt for m in messages])
    return [m.body for m in messages]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_channel_serves_the_data_calls(queue):
    assert round_trip(queue) == [b"a", b"b", b"c"]
    actor = queue._target.route.partitions[0]
    assert TRANSPORT.endpoint(actor) is not None  # the calls went over the socket


def test_an_unreachable_socket_falls_back_to_ray(queue):
    actor = queue._target.route.partitions[0]
    real = ray.get(actor.wire_endpoint.remote())
    # As behind a firewall that lets only Ray's own ports through: the actor lives, its port is out of reach.
    TRANSPORT.remember(actor, replace(real, port=closed_port()))
    try:
        assert round_trip(queue) == [b"a", b"b", b"c"]
        assert TRANSPORT.through_ray(actor)

        async def awaitable() -> list[bytes]:
            await queue.send_async(b"d")
            messages = await queue.receive_async(10)
            await queue.delete_async(messages[0].receipt)
            return [m.body for m in messages]

        assert asyncio.run(awaitable()) == [b"d"]
        assert queue.stats().visible == 0
    finally:
        TRANSPORT.forget(actor)


def test_every_call_can_go_through_ray(queue, monkeypatch):
    monkeypatch.setenv("RAYQUEUE_CHANNEL", "ray")  # as a user sets it, after rayqueue was imported
    TRANSPORT.reset()
    assert round_trip(queue) == [b"a", b"b", b"c"]
    assert TRANSPORT.asked() == 0  # no actor was asked for its socket


def test_an_unknown_call_is_refused_at_once_not_retried(queue):
    from rayqueue.errors import UnknownCall

    actor = queue._target.route.partitions[0]
    started = time.monotonic()
    with pytest.raises(UnknownCall):
        TRANSPORT.start(actor, "no_such_call", (), timeout_s=10.0).result(10.0)
    assert time.monotonic() - started < defaults.PARTITION_RETRY_S  # answered, not retried for 30 s
