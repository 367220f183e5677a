"""The direct channel (rayqueue.transport.wire): a real asyncio server on loopback, real sockets."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import pickle
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rayqueue import defaults
from rayqueue.errors import (
    BadFrame,
    ForbiddenType,
    FrameTooLarge,
    IncompatiblePeer,
    MessageTooLarge,
    PartitionFenced,
    RayQueueError,
    TlsUnavailable,
)
from rayqueue.message import PartitionStats
from rayqueue.schemas import SEND_SCHEMA
from rayqueue.transport import safe_pickle, wire
from rayqueue.transport.wire import AsyncPool, ChannelBroken, Connection, Endpoint, Parked, Pool, Server


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("no pickling here")


class Foreign(Exception):
    """An error of a type the channel does not carry (it lives in a test module)."""


#: What the malicious payloads below did, had they run.
RAN: list[str] = []


def run(what: str) -> str:
    RAN.append(what)
    return what


class Evil:
    """Runs ``run`` when unpickled by an unrestricted unpickler."""

    def __reduce__(self) -> Any:
        return run, ("evil",)


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
    if method == "foreign":
        raise Foreign("from afar")
    if method == "evil":
        return Evil()
    if method == "big":
        return b"x" * args[0]
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
    with pytest.raises(ChannelBroken) as caught:
        call(forged, "echo", 1)
    assert caught.value.connecting  # nothing was sent
    assert running.server.failed_handshakes == 1


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


# ------------------------------------------------------------- helpers for the hardening tests

PEER = "test"


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes (or resets) the connection."""
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


def authenticated(endpoint: Endpoint) -> socket.socket:
    """A raw socket past the hello, to send frames no honest client would."""
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=5)
    hello = wire._ClientHello(endpoint)
    sock.sendall(hello.answer(recv_exactly(sock, wire._SERVER_HELLO.size)))
    hello.check(recv_exactly(sock, wire._PROOF_BYTES))
    return sock


def header(size: int, lengths: tuple[int, ...] = (), *, magic: bytes = wire.MAGIC, version: int | None = None) -> bytes:
    version = defaults.WIRE_PROTOCOL_VERSION if version is None else version
    return wire._HEADER.pack(magic, version, size, len(lengths)) + b"".join(wire._LENGTH.pack(n) for n in lengths)


def raw_frame(data: bytes) -> bytes:
    return header(len(data)) + data


def read_frame(sock: socket.socket) -> Any:
    size, count = wire._sizes(recv_exactly(sock, wire._HEADER.size), PEER)
    lengths = wire._lengths(recv_exactly(sock, wire._LENGTH.size * count), size, PEER)
    data = recv_exactly(sock, size)
    return safe_pickle.loads(data, [recv_exactly(sock, n) for n in lengths], PEER)


def serve_hello(conn: socket.socket, token: bytes, version: int | None = None) -> None:
    """The server's side of the hello, for a fake server that knows the token."""
    nonce = os.urandom(wire._NONCE_BYTES)
    version = defaults.WIRE_PROTOCOL_VERSION if version is None else version
    conn.sendall(wire._SERVER_HELLO.pack(wire.MAGIC, version, nonce))
    conn.sendall(wire._check_client_hello(token, nonce, recv_exactly(conn, wire._CLIENT_HELLO.size)))


class FakeServer:
    """A loopback port whose first connection ``script(conn)`` handles on a thread."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.token = os.urandom(32)
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self._thread.start()

    def _run(self, script: Callable[[socket.socket], None]) -> None:
        self._listener.settimeout(0.05)
        while True:
            try:
                conn, _ = self._listener.accept()
                break
            except TimeoutError:
                continue
            except OSError:  # closed before any client came
                return
        with conn:
            conn.settimeout(5)
            try:
                script(conn)
            except (OSError, EOFError):
                pass
            finally:
                self.done.set()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, self.token)

    def close(self) -> None:
        self._listener.close()
        self._thread.join(5)


@pytest.fixture
def fakes() -> Iterator[list[FakeServer]]:
    started: list[FakeServer] = []
    yield started
    for fake in started:
        fake.close()


def fake_server(fakes: list[FakeServer], script: Callable[[socket.socket], None]) -> FakeServer:
    fake = FakeServer(script)
    fakes.append(fake)
    return fake


def async_call(endpoint: Endpoint, method: str, *args: Any) -> Any:
    async def main() -> Any:
        pool = AsyncPool()
        try:
            return await pool.call(endpoint, "p", method, args)
        finally:
            pool.close()

    return asyncio.run(main())


def both_clients() -> list[Callable[..., Any]]:
    return [call, async_call]


def eventually(check: Callable[[], bool], within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(autouse=True)
def nothing_ran() -> Iterator[None]:
    RAN.clear()
    yield
    assert not RAN, f"a malicious payload ran: {RAN}"


# ------------------------------------------------------------------ versions


@pytest.mark.parametrize("client", both_clients(), ids=["blocking", "awaitable"])
def test_a_server_of_another_version_is_a_named_error_at_once(fakes, client):
    newer = defaults.WIRE_PROTOCOL_VERSION + 1
    fake = fake_server(fakes, lambda conn: (serve_hello(conn, b"", version=newer), recv_all(conn)))
    started = time.monotonic()
    with pytest.raises(IncompatiblePeer) as caught:
        client(fake.endpoint, "echo", 1)
    assert (caught.value.local_version, caught.value.peer_version) == (defaults.WIRE_PROTOCOL_VERSION, newer)
    assert time.monotonic() - started < 2.0  # not 30 s of retries: callers do not retry it
    assert not isinstance(caught.value, ChannelBroken)


def test_callers_do_not_retry_an_incompatible_peer():
    from rayqueue.transport.drivers import _ELSEWHERE, _RETRYABLE

    error = IncompatiblePeer("h:1", 2, 3)
    assert isinstance(error, RayQueueError)
    assert not isinstance(error, _RETRYABLE + _ELSEWHERE)


@pytest.mark.parametrize("client", both_clients(), ids=["blocking", "awaitable"])
def test_a_frame_of_another_version_is_a_named_error(fakes, client):
    def older_frames(conn: socket.socket) -> None:
        serve_hello(conn, fake.token)
        read_frame(conn)
        conn.sendall(header(5, version=1) + b"xxxxx")
        recv_all(conn)

    fake = fake_server(fakes, older_frames)
    with pytest.raises(IncompatiblePeer, match="speaks protocol 1"):
        client(fake.endpoint, "echo", 1)


def test_a_client_of_another_version_is_refused_by_the_server(running):
    sock = socket.create_connection((running.endpoint.host, running.endpoint.port), timeout=5)
    recv_exactly(sock, wire._SERVER_HELLO.size)
    other = defaults.WIRE_PROTOCOL_VERSION + 1
    sock.sendall(wire._CLIENT_HELLO.pack(wire.MAGIC, other, b"n" * 16, b"p" * 32))
    assert recv_all(sock) == b""  # closed without a proof
    assert eventually(lambda: running.server.failed_handshakes == 1)


# ------------------------------------------------------------ authentication


@pytest.mark.parametrize("client", both_clients(), ids=["blocking", "awaitable"])
@pytest.mark.parametrize("proof", [True, False], ids=["forged proof", "no proof"])
def test_a_server_that_does_not_know_the_token_gets_nothing_unpickled(fakes, monkeypatch, client, proof):
    """A process on a dead partition's port: it knows no token, and answers with a malicious pickle."""
    unpickled: list[Any] = []
    monkeypatch.setattr(safe_pickle, "loads", lambda *args: unpickled.append(args))
    assert pickle.loads(pickle.dumps(Evil())) == "evil" and RAN.pop() == "evil"  # the payload does run if unpickled

    def squat(conn: socket.socket) -> None:
        conn.sendall(wire._SERVER_HELLO.pack(wire.MAGIC, defaults.WIRE_PROTOCOL_VERSION, os.urandom(16)))
        recv_exactly(conn, wire._CLIENT_HELLO.size)
        malicious = b"".join(wire._frame((True, Evil()), PEER))
        conn.sendall((os.urandom(32) if proof else b"") + malicious * 3)
        recv_all(conn)

    fake = fake_server(fakes, squat)
    with pytest.raises(ChannelBroken, match="did not prove") as caught:
        client(fake.endpoint, "echo", 1)
    assert caught.value.connecting  # no request went out: the caller may fall back to Ray
    assert not unpickled


class Relay:
    """Forwards a loopback port to a server and keeps every byte the clients sent."""

    def __init__(self, target: Endpoint) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = replace(target, port=self._listener.getsockname()[1])
        self.sent = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection((self._target.host, self._target.port))
            threading.Thread(target=self._pump, args=(client, server, self.sent), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if keep is not None:
                    keep += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self._listener.close()


def test_the_token_never_crosses_the_wire(running):
    relay = Relay(running.endpoint)
    try:
        assert call(relay.endpoint, "echo", 1) == ("p", (1,))
        assert async_call(relay.endpoint, "echo", 2) == ("p", (2,))
    finally:
        relay.close()
    token = running.endpoint.token
    assert len(relay.sent) > 2 * wire._CLIENT_HELLO.size  # both clients spoke through the relay
    assert token not in relay.sent and token.hex().encode() not in relay.sent


def test_the_token_is_in_no_repr(running):
    token = running.endpoint.token
    for text in (repr(running.endpoint), str(running.endpoint)):
        assert repr(token) not in text and token.hex() not in text and str(running.endpoint.port) in text


# ------------------------------------------------------------ what may be unpickled


def test_a_malicious_request_from_an_authenticated_peer_is_refused_and_does_not_run(running):
    connection = Connection(running.endpoint, 5.0)
    connection.request("p", "echo", (Evil(),))
    with pytest.raises(ForbiddenType) as caught:
        connection.reply(5.0)
    assert (caught.value.module, caught.value.name) == (__name__, "run")
    connection.request("p", "echo", (3,))  # the frame was read whole: the connection goes on
    assert connection.reply(5.0) == ("p", (3,))
    connection.close()


@pytest.mark.parametrize("client", both_clients(), ids=["blocking", "awaitable"])
def test_a_malicious_reply_is_refused_and_does_not_run(running, client):
    with pytest.raises(ForbiddenType, match=r"test_wire\.run"):
        client(running.endpoint, "evil")


@pytest.mark.parametrize(
    "payload",
    [
        b"cos\nsystem\n(S'touch {marker}'\ntR.",
        b"cposix\nsystem\n(S'touch {marker}'\ntR.",
        b"csubprocess\ncall\n((S'touch'\nS'{marker}'\nltR.",
        b'cbuiltins\neval\n(S\'open("{marker}", "w")\'\ntR.',
        b'cbuiltins\nexec\n(S\'open("{marker}", "w")\'\ntR.',
        b"cbuiltins\n__import__\n(S'os'\ntR.",
        b"cbuiltins\ngetattr\n(cbuiltins\nbytes\nS'fromhex'\ntR.",
        b"cbuiltins\ntype\n(S'X'\n(t}tR.",
        b"cpyarrow.lib\n_reconstruct_table\n\x80\x05\x95.",  # allowed names only by their exact module
        b"cnumpy\nload\n(S'{marker}'\ntR.",
        b"ctests.unit.test_wire\nrun\n(S'x'\ntR.",
    ],
    ids=lambda payload: payload.split(b"\n")[0][1:].decode() + "." + payload.split(b"\n")[1].decode(),
)
def test_the_unpickler_refuses_every_other_callable(tmp_path, payload):
    marker = tmp_path / "ran"
    data = payload.replace(b"{marker}", str(marker).encode())
    with pytest.raises(BadFrame):
        safe_pickle.loads(data, (), PEER)
    assert not marker.exists()


def test_every_type_the_data_and_replica_calls_carry_passes_the_allow_list():
    rows = pa.table(
        {
            "id": pa.array([f"m{i}" for i in range(40)]),
            "body": pa.array([bytes([i]) * (i * 1000) for i in range(40)], pa.binary()),
            "key": pa.array([None if i % 2 else "k" for i in range(40)]),
            "attributes": pa.array(
                [[("a", "b")] if i % 3 else None for i in range(40)], pa.map_(pa.string(), pa.string())
            ),
        },
        schema=SEND_SCHEMA,
    )
    stamped = rows.add_column(0, "offset", pa.array(range(40), pa.int64()))
    stamped = stamped.append_column("sent_at", pa.array([1_700_000_000_000_000] * 40, pa.timestamp("us", tz="UTC")))
    delivered = stamped.append_column("receive_count", pa.array([1] * 40, pa.int32()))
    for name in ("token", "epoch"):
        delivered = delivered.append_column(name, pa.array(range(40), pa.int64()))
    values = [
        ("p", "send", (rows, True)),
        ("p", "send", (pa.concat_tables([rows, rows.slice(5)]), False)),
        ("p", "receive", (10, 1.5, None)),
        (True, delivered.slice(3, 20)),
        ("p", "delete", (np.arange(9, dtype=np.int64), np.arange(9, dtype=np.int64) * 7, ["0.1.2.3"])),
        ("p", "change_visibility", (np.int64(4), 5, "0.1.4.5", 30.0)),
        ("p", "hold_segment", (3, stamped.to_batches()[0])),
        ("p", "hold_deletes", (3, 7, np.arange(100_000, dtype=np.int64))),
        (True, PartitionStats(1, 2, 3, 4, retiring=True)),
        (True, Parked(12)),
        (True, None),
        (False, MessageTooLarge("q", 10, 5, 3)),
        (False, PartitionFenced("q/1", 4)),
        (False, KeyError("k")),
        (False, pa.ArrowInvalid("bad")),
    ]
    for value in values:
        head, *buffers = wire._frame(value, PEER)
        size, count = wire._sizes(bytes(head[: wire._HEADER.size]), PEER)
        data = bytes(head[-size:]) if size else b""
        back = safe_pickle.loads(data, buffers, PEER)
        assert pickle.dumps(back) == pickle.dumps(value), value


def test_an_error_of_a_type_the_channel_does_not_carry_reaches_the_caller_in_words(running):
    with pytest.raises(RayQueueError, match="Foreign: from afar") as caught:
        call(running.endpoint, "foreign")
    assert not isinstance(caught.value, Foreign)


def test_a_frame_that_does_not_unpickle_gets_a_named_error_and_the_connection_goes_on(running, caplog):
    sock = authenticated(running.endpoint)
    sock.sendall(raw_frame(b"this is no pickle"))
    assert isinstance(read_frame(sock)[1], BadFrame)
    sock.sendall(raw_frame(pickle.dumps(("only", "two"))))
    _, error = read_frame(sock)
    assert isinstance(error, BadFrame) and "(partition, method, args)" in str(error)
    sock.sendall(raw_frame(pickle.dumps(("p", "echo", (4,)))))
    assert read_frame(sock) == (True, ("p", (4,)))
    sock.close()
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "garbage",
    [
        header(4, magic=b"XXXX") + b"abcd",  # out of step
        header(2**60),  # a pickle of an exabyte
        header(0, (2**40,)),  # a buffer of a terabyte
        wire._HEADER.pack(wire.MAGIC, defaults.WIRE_PROTOCOL_VERSION, 0, 2**31),  # two billion buffers
    ],
    ids=["bad magic", "huge pickle", "huge buffer", "many buffers"],
)
def test_a_header_out_of_step_or_past_the_limits_closes_the_connection(running, caplog, garbage):
    sock = authenticated(running.endpoint)
    sock.sendall(garbage)
    started = time.monotonic()
    assert recv_all(sock) == b""  # closed without waiting for the bytes announced
    assert time.monotonic() - started < 2.0
    assert call(running.endpoint, "echo", 5) == ("p", (5,))  # the server goes on
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize("client", both_clients(), ids=["blocking", "awaitable"])
@pytest.mark.parametrize("lengths", [(2**60,), (64 * 1024 * 1024,)], ids=["exabyte", "64 MiB"])
def test_a_reply_header_past_the_limits_is_refused_before_allocating(fakes, monkeypatch, client, lengths):
    monkeypatch.setattr(defaults, "MAX_FRAME_BYTES", 1024 * 1024)

    def huge_reply(conn: socket.socket) -> None:
        serve_hello(conn, fake.token)
        read_frame(conn)
        conn.sendall(header(10, lengths))
        recv_all(conn)

    fake = fake_server(fakes, huge_reply)
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge):
            client(fake.endpoint, "echo", 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_a_frame_past_the_limits_is_refused_before_it_is_sent(running, monkeypatch):
    monkeypatch.setattr(defaults, "MAX_FRAME_BYTES", 1024 * 1024)
    connection = Connection(running.endpoint, 5.0)
    with pytest.raises(FrameTooLarge):
        connection.request("p", "echo", (b"x" * 2 * 1024 * 1024,))
    connection.request("p", "big", (2 * 1024 * 1024,))  # a reply past the limits: refused by the server
    with pytest.raises(FrameTooLarge):
        connection.reply(5.0)
    connection.request("p", "echo", (6,))  # nothing half-sent either way: still in step
    assert connection.reply(5.0) == ("p", (6,))
    connection.close()


# ------------------------------------------------------------------ limits


def test_unauthenticated_connections_are_capped(running, monkeypatch):
    monkeypatch.setattr(defaults, "MAX_UNAUTHENTICATED_CONNECTIONS", 3)
    monkeypatch.setattr(defaults, "HELLO_TIMEOUT_S", 30.0)
    address = (running.endpoint.host, running.endpoint.port)
    silent = [socket.create_connection(address, timeout=5) for _ in range(3)]
    for sock in silent:
        recv_exactly(sock, wire._SERVER_HELLO.size)  # admitted: it got the server's hello
    extra = socket.create_connection(address, timeout=5)
    assert recv_all(extra) == b""  # closed at once, without a hello
    assert running.server.refused_connections == 1
    for sock in silent:
        sock.close()
    assert eventually(lambda: running.server._unauthenticated == 0)
    assert call(running.endpoint, "echo", 7) == ("p", (7,))


def test_a_silent_connection_is_dropped_after_the_hello_timeout(running, monkeypatch):
    monkeypatch.setattr(defaults, "HELLO_TIMEOUT_S", 0.2)
    silent = socket.create_connection((running.endpoint.host, running.endpoint.port), timeout=10)
    started = time.monotonic()
    received = recv_all(silent)
    assert received[:4] == wire.MAGIC and len(received) == wire._SERVER_HELLO.size  # a hello, then closed
    assert time.monotonic() - started < 5.0
    assert eventually(lambda: running.server.failed_handshakes == 1)


def connect_blocking(endpoint: Endpoint) -> None:
    Connection(endpoint, 60.0)  # a call's own timeout is its wait plus a minute


def connect_awaitable(endpoint: Endpoint) -> None:
    async def main() -> None:
        await asyncio.wait_for(AsyncPool().call(endpoint, "p", "echo", ()), 10.0)  # a bound for the test only

    asyncio.run(main())


@pytest.mark.parametrize("client", [connect_blocking, connect_awaitable], ids=["blocking", "awaitable"])
def test_a_port_that_never_answers_fails_within_the_connect_timeout(monkeypatch, client):
    monkeypatch.setattr(defaults, "CONNECT_TIMEOUT_S", 0.5)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # and never accepts: the backlog fills, then SYNs go unanswered, as behind a firewall
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    started = time.monotonic()
    try:
        with pytest.raises(ChannelBroken) as caught:
            client(Endpoint("127.0.0.1", listener.getsockname()[1], b"t" * 32))
    finally:
        for sock in [listener, *fillers]:
            sock.close()
    assert caught.value.connecting
    assert time.monotonic() - started < 5.0


# --------------------------------------------------------------------- TLS


def make_ca(name: str) -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital_signature, key_cert_sign, crl_sign
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(ca: tuple[Any, Any], name: str) -> tuple[Any, Any]:
    """A node's certificate, as Ray's docs make them: signed by the CA, one for server and client."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("node")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_tls_files(directory: Path, ca: tuple[Any, Any], leaf: tuple[Any, Any]) -> dict[str, str]:
    directory.mkdir()
    (directory / "ca.crt").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    (directory / "node.crt").write_bytes(leaf[1].public_bytes(serialization.Encoding.PEM))
    (directory / "node.key").write_bytes(
        leaf[0].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return {
        "RAY_USE_TLS": "1",
        "RAY_TLS_SERVER_CERT": str(directory / "node.crt"),
        "RAY_TLS_SERVER_KEY": str(directory / "node.key"),
        "RAY_TLS_CA_CERT": str(directory / "ca.crt"),
    }


class RayTls:
    """Ray's TLS settings for a throwaway CA, and another CA's, to switch this process between."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        ca, other_ca = make_ca("ray-ca"), make_ca("another-ca")
        self.ours = write_tls_files(directory / "ours", ca, make_leaf(ca, "node"))
        self.theirs = write_tls_files(directory / "theirs", other_ca, make_leaf(other_ca, "node"))
        self._monkeypatch = monkeypatch
        self.use(self.ours)

    def use(self, settings: dict[str, str]) -> None:
        for name, value in settings.items():
            self._monkeypatch.setenv(name, value)

    def off(self) -> None:
        for name in self.ours:
            self._monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ray_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RayTls:
    return RayTls(tmp_path, monkeypatch)


@pytest.fixture
def tls_running(ray_tls: RayTls) -> Iterator[Running]:
    server = Running()
    yield server
    server.stop()


def test_with_ray_tls_calls_cross_over_mutual_tls(tls_running):
    assert tls_running.endpoint.tls
    assert call(tls_running.endpoint, "echo", b"secret") == ("p", (b"secret",))
    assert async_call(tls_running.endpoint, "echo", 8) == ("p", (8,))
    table = pa.table({"body": pa.array([b"y" * 40_000] * 20, pa.binary())})  # out-of-band buffers, over TLS
    _, (echoed,) = call(tls_running.endpoint, "echo", table)
    assert echoed.equals(table)


def test_a_tls_server_says_nothing_in_plaintext(tls_running):
    sock = socket.create_connection((tls_running.endpoint.host, tls_running.endpoint.port), timeout=5)
    sock.sendall(b"\0" * 64)  # not a TLS ClientHello
    assert wire.MAGIC not in recv_all(sock)


def test_a_client_that_cannot_do_tls_does_not_connect_in_plaintext(tls_running, ray_tls, fakes):
    ray_tls.off()  # this process has no TLS settings; the endpoint says TLS
    for client in both_clients():
        with pytest.raises(ChannelBroken, match="TLS") as caught:
            client(tls_running.endpoint, "echo", 1)
        assert caught.value.connecting
    # A server that does not use TLS while Ray here does: refused before a byte goes out.
    ray_tls.use(ray_tls.ours)
    fake = fake_server(fakes, lambda conn: recv_all(conn))
    with pytest.raises(ChannelBroken, match="TLS"):
        call(fake.endpoint, "echo", 1)
    assert not fake.done.wait(0.2)  # nothing ever connected to it


def test_a_server_that_cannot_load_rays_certificates_serves_nothing(ray_tls, monkeypatch):
    monkeypatch.setenv("RAY_TLS_SERVER_KEY", "/nonexistent/node.key")

    async def start() -> Any:
        return await Server(dispatch).start("127.0.0.1")

    with pytest.raises(TlsUnavailable, match="node.key"):
        asyncio.run(start())

    import ray

    from rayqueue.actors.partition_actor import serve_wire

    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    server, endpoint = asyncio.run(serve_wire(None, dispatch))
    assert endpoint is None and server.endpoint is None  # handles call this actor through Ray


@pytest.mark.parametrize("side", ["server", "client"])
def test_tls_peers_must_show_a_certificate_from_rays_ca(tls_running, ray_tls, monkeypatch, side):
    if side == "server":  # the client trusts another CA: the server's certificate does not pass
        monkeypatch.setenv("RAY_TLS_CA_CERT", ray_tls.theirs["RAY_TLS_CA_CERT"])
    else:  # the client shows a certificate from another CA: the server refuses it
        monkeypatch.setenv("RAY_TLS_SERVER_CERT", ray_tls.theirs["RAY_TLS_SERVER_CERT"])
        monkeypatch.setenv("RAY_TLS_SERVER_KEY", ray_tls.theirs["RAY_TLS_SERVER_KEY"])
    for client in both_clients():
        with pytest.raises(ChannelBroken) as caught:
            client(tls_running.endpoint, "echo", 1)
        assert caught.value.connecting
