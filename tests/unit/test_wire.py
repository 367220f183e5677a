"""The direct channel (rayqueue.transport.wire): a real asyncio server on loopback, real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pytest

from rayqueue.errors import MessageTooLarge, RayQueueError
from rayqueue.transport.wire import AsyncPool, ChannelBroken, Connection, Endpoint, Pool, Server


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("no pickling here")


async def dispatch(partition: str, method: str, args: tuple[Any, ...]) -> Any:
    if method == "echo":
        return partition, args
    if method == "sleep":
        await asyncio.sleep(args[0])
        return args[0]
    if method == "too_large":
        raise MessageTooLarge("q", 10, 5, 3)
    if method == "unpicklable":
        raise Unpicklable("boom")
    raise ValueError(f"no method {method}")


class Running:
    """A server on its own event loop thread, as a partition actor runs one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = Server(dispatch)
        self.endpoint: Endpoint = asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1"), self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shut_down(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    async def _shut_down(self) -> None:
        # As a killed process would: stop listening, drop every connection mid-call.
        self.server.close()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


@pytest.fixture
def running() -> Iterator[Running]:
    server = Running()
    yield server
    server.stop()


def call(endpoint: Endpoint, method: str, *args: Any, partition: str = "p") -> Any:
    connection = Connection(endpoint, 5.0)
    try:
        connection.request(partition, method, args)
        return connection.reply(5.0)
    finally:
        connection.close()


def test_a_call_returns_what_dispatch_returned(running):
    assert call(running.endpoint, "echo", 1, b"x", partition="q/3") == ("q/3", (1, b"x"))


def test_start_twice_keeps_one_endpoint(running):
    again = asyncio.run_coroutine_threadsafe(running.server.start("127.0.0.1"), running.loop).result()
    assert again == running.endpoint


def test_an_error_comes_back_as_itself_with_its_fields(running):
    with pytest.raises(MessageTooLarge) as caught:
        call(running.endpoint, "too_large")
    assert (caught.value.size, caught.value.limit, caught.value.index) == (10, 5, 3)


def test_an_error_that_does_not_pickle_still_reaches_the_caller(running):
    with pytest.raises(RayQueueError, match="Unpicklable: boom"):
        call(running.endpoint, "unpicklable")


def test_a_connection_survives_an_error_reply(running):
    connection = Connection(running.endpoint, 5.0)
    connection.request("p", "nope", ())
    with pytest.raises(ValueError, match="no method nope"):
        connection.reply(5.0)
    connection.request("p", "echo", (2,))
    assert connection.reply(5.0) == ("p", (2,))
    connection.close()


def test_large_payloads_cross_whole(running):
    body = bytes(range(256)) * (20 * 1024)  # 5 MiB
    assert call(running.endpoint, "echo", body) == ("p", (body,))


def test_arrow_columns_cross_out_of_band_whole(running):
    bodies = [bytes([i % 251]) * (1000 + i) for i in range(300)]  # 0.3 MB of body buffer
    table = pa.table({"body": pa.array(bodies, pa.binary()), "n": pa.array(range(300), pa.int64())})
    _, (echoed,) = call(running.endpoint, "echo", table)
    assert echoed.equals(table)

    async def main() -> Any:
        pool = AsyncPool()
        try:
            return await pool.call(running.endpoint, "p", "echo", (table.slice(100),))
        finally:
            pool.close()

    _, (sliced,) = asyncio.run(main())
    assert sliced.equals(table.slice(100))


def test_a_wrong_token_is_refused(running):
    forged = replace(running.endpoint, token=b"\0" * len(running.endpoint.token))
    with pytest.raises(ChannelBroken):
        call(forged, "echo", 1)


def test_no_server_is_channel_broken(running):
    running.stop()
    with pytest.raises(ChannelBroken, match="connect"):
        Connection(running.endpoint, 1.0)


def test_a_server_that_goes_away_mid_call_is_channel_broken(running):
    connection = Connection(running.endpoint, 5.0)
    connection.request("p", "sleep", (0.5,))
    running.stop()
    with pytest.raises(ChannelBroken):
        connection.reply(5.0)
    assert connection.closed


def test_a_reply_that_takes_too_long_is_channel_broken_and_drops_the_connection(running):
    connection = Connection(running.endpoint, 5.0)
    connection.request("p", "sleep", (1.0,))
    with pytest.raises(ChannelBroken):
        connection.reply(0.05)
    assert connection.closed  # a late reply must never answer the next request


def test_the_pool_reuses_connections_and_forgets_failed_servers(running):
    pool = Pool()
    first = pool.take(running.endpoint, 5.0)
    pool.give_back(first)
    assert pool.take(running.endpoint, 5.0) is first
    pool.give_back(first)
    pool.forget(running.endpoint)
    assert first.closed
    assert pool.take(running.endpoint, 5.0) is not first


def test_the_pool_keeps_no_closed_connection(running):
    pool = Pool()
    connection = pool.take(running.endpoint, 5.0)
    connection.close()
    pool.give_back(connection)
    assert pool.take(running.endpoint, 5.0) is not connection


def test_async_calls_run_concurrently_and_each_gets_its_own_reply(running):
    async def main() -> list[Any]:
        pool = AsyncPool()
        try:
            return await asyncio.gather(*(pool.call(running.endpoint, "p", "sleep", (d,)) for d in (0.3, 0.1, 0.2)))
        finally:
            pool.close()

    assert asyncio.run(main()) == [0.3, 0.1, 0.2]


def test_async_errors_and_reuse(running):
    async def main() -> Any:
        pool = AsyncPool()
        try:
            with pytest.raises(MessageTooLarge):
                await pool.call(running.endpoint, "p", "too_large", ())
            return await pool.call(running.endpoint, "p", "echo", (7,))
        finally:
            pool.close()

    assert asyncio.run(main()) == ("p", (7,))


def test_an_async_call_cut_short_does_not_answer_the_next(running):
    async def main() -> Any:
        pool = AsyncPool()
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(pool.call(running.endpoint, "p", "sleep", (0.5,)), 0.05)
            return await pool.call(running.endpoint, "p", "echo", ("next",))
        finally:
            pool.close()

    assert asyncio.run(main()) == ("p", ("next",))


def test_async_call_to_a_stopped_server_is_channel_broken(running):
    running.stop()

    async def main() -> None:
        await AsyncPool().call(running.endpoint, "p", "echo", ())

    with pytest.raises(ChannelBroken):
        asyncio.run(main())


def test_a_connection_that_never_presents_the_token_is_dropped(running, monkeypatch):
    import rayqueue.transport.wire as wire

    monkeypatch.setattr(wire, "HELLO_TIMEOUT_S", 0.1)
    silent = socket.create_connection((running.endpoint.host, running.endpoint.port))
    silent.settimeout(5)
    assert silent.recv(1) == b""  # closed by the server
    silent.close()


def test_a_forked_child_does_not_reuse_its_parents_connections(running):
    pool = Pool()
    parent = pool.take(running.endpoint, 5.0)
    pool.give_back(parent)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report whether it got the parent's connection, then leave
        os.write(write, b"1" if pool.take(running.endpoint, 5.0) is parent else b"0")
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 1) == b"0"
    assert pool.take(running.endpoint, 5.0) is parent  # the parent still has it
