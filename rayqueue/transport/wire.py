"""A direct channel from queue handles to the processes that host partitions.

A Ray actor call costs about 0.9 ms here; a round trip on a plain TCP socket
between the same two processes costs about 0.02 ms. A queue's hot calls (send,
receive, delete) are one round trip each, so they go over a socket that every
partition process opens, while Ray still places, names, restarts and watches
the actors, and carries every control call.

- **Who may talk.** Each server has a random token, and a handle learns it only
  through a Ray call to the actor. The token never crosses the channel: on each
  new connection both sides prove that they know it (challenge and response, see
  the layout below), and the client checks the server's proof before it sends a
  request or reads anything it would unpickle. So a process that took over a dead
  partition's port learns nothing of use and cannot answer: the client sees
  ``ChannelBroken`` (nothing sent) and asks Ray for the actor again.
- **Encryption.** When Ray runs with TLS (``RAY_USE_TLS``), the channel uses mutual
  TLS with Ray's certificates (``rayqueue.transport.tls``); a server that cannot
  load them does not start, and a client never speaks in plaintext where either
  side wants TLS. Without TLS, like Ray's own traffic then, frames can be read
  (and, by someone on the path, altered) on the network; the token cannot.
- **Frames.** A pickle (protocol 5): ``(partition, method, args)`` one way,
  ``(ok, result or error)`` back. Large buffers (Arrow columns) travel after it,
  out of band, so a batch of bodies is never copied into the pickle. Both sides
  unpickle only the types on ``rayqueue.transport.safe_pickle``'s allow-list. One
  call at a time per connection, so a reply always answers the last request;
  concurrent calls use more connections, which each pool keeps for reuse.
- **Versions.** Every hello and every frame header starts with a magic and the
  protocol version: a peer of another version raises ``IncompatiblePeer``.
- **Limits** (``rayqueue.defaults``): connections that have not authenticated are
  capped and must finish the hello within ``HELLO_TIMEOUT_S``; headers are checked
  against ``MAX_FRAME_BYTES`` and ``MAX_FRAME_BUFFERS`` before anything is
  allocated for them; clients connect within ``CONNECT_TIMEOUT_S``.
- **Failures.** A connection that breaks, is refused or times out raises
  ``ChannelBroken``: the call may or may not have run. Callers treat it like a
  dead actor (refresh the route, retry with dedup); it never reaches users. A
  frame that arrives whole but does not unpickle, or names a forbidden type,
  fails its call with ``BadFrame`` or ``ForbiddenType``, and the connection
  goes on.

Layout (network byte order; ``MAGIC`` is ``b"rqwc"``, ``V`` the protocol version,
``mac(label, a, b)`` is HMAC-SHA256 keyed with the token over ``label a b``)::

    server hello   MAGIC V:u16 server_nonce:16
    client hello   MAGIC V:u16 client_nonce:16 mac("rayqueue channel V client", server_nonce, client_nonce)
    server proof   mac("rayqueue channel V server", client_nonce, server_nonce)
    frame          MAGIC V:u16 pickle_length:u64 buffer_count:u32 buffer_length:u64*count pickle buffers

TLS, when on, wraps the whole stream (the hello included).

This module knows nothing of Ray or of queues: a server serves a ``dispatch``
coroutine, clients call it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import pickle
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rayqueue import defaults
from rayqueue.errors import BadFrame, FrameTooLarge, IncompatiblePeer, RayQueueError, TlsUnavailable
from rayqueue.transport import safe_pickle, tls

log = logging.getLogger(__name__)

#: Starts every hello and frame header: a peer that is not a rayqueue channel, or a
#: stream out of step, shows at once.
MAGIC = b"rqwc"
_NONCE_BYTES = 16
_PROOF_BYTES = hashlib.sha256().digest_size
_TOKEN_BYTES = 32
_SERVER_HELLO = struct.Struct(f"!4sH{_NONCE_BYTES}s")
_CLIENT_HELLO = struct.Struct(f"!4sH{_NONCE_BYTES}s{_PROOF_BYTES}s")
_HEADER = struct.Struct("!4sHQI")  # magic, version, pickle length, buffer count; then a length per buffer
_LENGTH = struct.Struct("!Q")
#: Buffers at least this large travel out of band; smaller ones stay in the pickle.
_OUT_OF_BAND_BYTES = 16 * 1024

#: ``dispatch(partition, method, args)``: what a server runs for each request.
Dispatch = Callable[[str, str, tuple[Any, ...]], Awaitable[Any]]
#: A frame as it goes out: header and pickle in one piece, then each large buffer as it is.
Parts = list[bytes | memoryview]


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    token: bytes = field(repr=False)  # a secret: never in a log line or a traceback
    #: Whether the server speaks TLS only; a client that cannot match it does not connect.
    tls: bool = False


@dataclass(frozen=True)
class Parked:
    """The reply to a call was too large for the socket: fetch it by ``token`` another way."""

    token: int


class ChannelBroken(Exception):
    """The connection failed or timed out; the call may or may not have run
    (unless ``connecting``: then no request was sent).

    Internal: callers turn it into a retry, and users see ``PartitionUnavailable``
    only if retries run out.
    """

    def __init__(self, message: str, *, connecting: bool = False) -> None:
        super().__init__(message)
        self.connecting = connecting


# ------------------------------------------------------------------ hellos


def _proof(token: bytes, role: bytes, first_nonce: bytes, second_nonce: bytes) -> bytes:
    # Distinct labels (of one length) keep a server's proof from ever serving as a
    # client's; the version in the label keeps a proof from passing for another protocol's.
    label = b"rayqueue channel %d %s" % (defaults.WIRE_PROTOCOL_VERSION, role)
    return hmac.new(token, label + first_nonce + second_nonce, hashlib.sha256).digest()


class _ClientHello:
    """A client's side of the hello, without the I/O: ``answer`` the server's hello,
    then ``check`` the server's proof before trusting a byte from it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._token = endpoint.token
        self._peer = _name(endpoint)
        self._nonce = os.urandom(_NONCE_BYTES)
        self._expected = b""

    def answer(self, server_hello: bytes | bytearray) -> bytes:
        magic, version, server_nonce = _SERVER_HELLO.unpack(server_hello)
        if magic != MAGIC:
            raise ChannelBroken(f"{self._peer} is not a rayqueue channel", connecting=True)
        if version != defaults.WIRE_PROTOCOL_VERSION:
            raise IncompatiblePeer(self._peer, defaults.WIRE_PROTOCOL_VERSION, version)
        self._expected = _proof(self._token, b"server", self._nonce, server_nonce)
        proof = _proof(self._token, b"client", server_nonce, self._nonce)
        return _CLIENT_HELLO.pack(MAGIC, defaults.WIRE_PROTOCOL_VERSION, self._nonce, proof)

    def check(self, server_proof: bytes | bytearray) -> None:
        if not self._expected or not hmac.compare_digest(server_proof, self._expected):
            raise ChannelBroken(f"{self._peer} did not prove that it knows the token", connecting=True)


class _Refused(Exception):
    """A client's hello was wrong (internal to the server)."""


def _check_client_hello(token: bytes, server_nonce: bytes, hello: bytes) -> bytes:
    """The server's proof for a client whose hello is right; raises ``_Refused`` otherwise."""
    magic, version, client_nonce, proof = _CLIENT_HELLO.unpack(hello)
    if magic != MAGIC:
        raise _Refused("not a rayqueue client")
    if version != defaults.WIRE_PROTOCOL_VERSION:
        raise _Refused(f"protocol {version}, not {defaults.WIRE_PROTOCOL_VERSION}")
    if not hmac.compare_digest(proof, _proof(token, b"client", server_nonce, client_nonce)):
        raise _Refused("wrong proof of the token")
    return _proof(token, b"server", client_nonce, server_nonce)


def _client_tls(endpoint: Endpoint) -> ssl.SSLContext | None:
    """The TLS context to connect with, or None for plaintext; refuses (``ChannelBroken``,
    nothing sent) where this process and the server disagree, rather than speak in clear."""
    if endpoint.tls != tls.wanted():
        side = "the server uses TLS and this process does not" if endpoint.tls else "Ray uses TLS, the server does not"
        raise ChannelBroken(f"not connecting to {_name(endpoint)}: {side}", connecting=True)
    if not endpoint.tls:
        return None
    try:
        return tls.client_context()
    except TlsUnavailable as error:
        raise ChannelBroken(f"not connecting to {_name(endpoint)}: {error}", connecting=True) from None


def _name(endpoint: Endpoint) -> str:
    return f"{endpoint.host}:{endpoint.port}"


# ------------------------------------------------------------------ frames


def _frame(value: Any, peer: str) -> Parts:
    """``value`` as a frame; raises ``FrameTooLarge`` (nothing sent) past the limits."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if view.nbytes < _OUT_OF_BAND_BYTES:
            return True  # in band
        buffers.append(view)
        return False

    data = pickle.dumps(value, protocol=5, buffer_callback=out_of_band)
    _within(peer, "the frame's buffer count", len(buffers), defaults.MAX_FRAME_BUFFERS)
    _within(peer, "the frame's size", len(data) + sum(view.nbytes for view in buffers), defaults.MAX_FRAME_BYTES)
    lengths = b"".join(_LENGTH.pack(view.nbytes) for view in buffers)
    header = _HEADER.pack(MAGIC, defaults.WIRE_PROTOCOL_VERSION, len(data), len(buffers))
    return [header + lengths + data, *buffers]


def _within(peer: str, what: str, size: int, limit: int) -> None:
    if size > limit:
        raise FrameTooLarge(peer, what, size, limit)


def _sizes(header: bytes | bytearray, peer: str) -> tuple[int, int]:
    """The pickle's length and the buffer count a header announces, once they pass the limits.
    Errors here leave the stream out of step: the connection must close."""
    magic, version, size, count = _HEADER.unpack(header)
    if magic != MAGIC:
        raise BadFrame(peer, "no frame header where one was due (the stream is out of step)")
    if version != defaults.WIRE_PROTOCOL_VERSION:
        raise IncompatiblePeer(peer, defaults.WIRE_PROTOCOL_VERSION, version)
    _within(peer, "the frame's buffer count", count, defaults.MAX_FRAME_BUFFERS)
    _within(peer, "the frame's pickle", size, defaults.MAX_FRAME_BYTES)
    return size, count


def _lengths(raw: bytes | bytearray, size: int, peer: str) -> tuple[int, ...]:
    lengths: tuple[int, ...] = struct.unpack(f"!{len(raw) // _LENGTH.size}Q", raw)
    _within(peer, "the frame's size", size + sum(lengths), defaults.MAX_FRAME_BYTES)
    return lengths


async def _read_frame(reader: asyncio.StreamReader, peer: str) -> tuple[bytes, list[bytes]]:
    """A frame's pickle and buffers, read whole (not unpickled yet)."""
    size, count = _sizes(await reader.readexactly(_HEADER.size), peer)
    lengths = _lengths(await reader.readexactly(_LENGTH.size * count), size, peer)
    data = await reader.readexactly(size)
    return data, [await reader.readexactly(length) for length in lengths]


def _request(value: Any, peer: str) -> tuple[str, str, tuple[Any, ...]]:
    if not (
        isinstance(value, tuple)
        and len(value) == 3
        and isinstance(value[0], str)
        and isinstance(value[1], str)
        and isinstance(value[2], tuple)
    ):
        raise BadFrame(peer, "a request must be (partition, method, args)")
    return value


def _result(value: Any, peer: str) -> Any:
    """What a reply frame carries: the call's result, or raises the error the call raised."""
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bool)):
        raise BadFrame(peer, "a reply must be (ok, result or error)")
    ok, result = value
    if ok:
        return result
    if not isinstance(result, BaseException):
        raise BadFrame(peer, f"an error reply holds a {type(result).__name__}")
    raise result


def _reply(ok: bool, value: Any, peer: str) -> Parts:
    try:
        if not ok:  # errors are open-ended: one the client would refuse goes in words instead
            safe_pickle.loads(pickle.dumps(value, protocol=5), (), peer)
        return _frame((ok, value), peer)
    except FrameTooLarge as error:
        return _frame((False, error), peer)
    except Exception as error:  # a value that does not pickle, or would not unpickle, still answers the call
        what = f"{type(value).__name__}: {value}" if not ok else f"a {type(value).__name__}"
        return _frame((False, RayQueueError(f"{what} (and it cannot cross the channel: {error})")), peer)


# ------------------------------------------------------------------- server


class Server:
    """Serves ``dispatch`` on a TCP port of ``host``, on the running event loop.

    ``failed_handshakes`` counts connections dropped in the hello (wrong token, wrong
    version, silence); ``refused_connections`` those closed at once because too many
    others had not authenticated yet.
    """

    def __init__(self, dispatch: Dispatch) -> None:
        self._dispatch = dispatch
        self._token = os.urandom(_TOKEN_BYTES)
        self._server: asyncio.base_events.Server | None = None
        self._unauthenticated = 0
        self.failed_handshakes = 0
        self.refused_connections = 0
        self.endpoint: Endpoint | None = None

    async def start(self, host: str) -> Endpoint:
        """Listen (once) and return where. Raises ``TlsUnavailable`` if Ray uses TLS and
        the channel cannot: it never serves in plaintext beside encrypted Ray."""
        if self.endpoint is None:
            context = tls.server_context() if tls.wanted() else None
            handshake_s = defaults.HELLO_TIMEOUT_S if context else None
            self._server = await asyncio.start_server(
                self._serve, host, 0, ssl=context, ssl_handshake_timeout=handshake_s
            )
            port = self._server.sockets[0].getsockname()[1]
            self.endpoint = Endpoint(host, port, self._token, tls=context is not None)
        return self.endpoint

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _no_delay(writer.get_extra_info("socket"))
        peer = _peer(writer)
        try:
            if await self._admit(reader, writer, peer):
                await self._answer(reader, writer, peer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # the loop is closing. End quietly: Python 3.11 logs a cancelled handler as an error
        except Exception as error:  # out of step (a bad header): this connection ends, the server goes on
            log.debug("channel connection from %s closed: %s", peer, error)
        finally:
            writer.close()

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> bool:
        """Whether the client proved that it knows the token (and got the server's proof)."""
        if self._unauthenticated >= defaults.MAX_UNAUTHENTICATED_CONNECTIONS:
            self.refused_connections += 1
            log.debug("channel connection from %s refused: too many unauthenticated connections", peer)
            return False
        self._unauthenticated += 1
        try:
            # Not wait_for: in Python 3.11 it swallows a cancellation that comes as the hello ends.
            async with asyncio.timeout(defaults.HELLO_TIMEOUT_S):
                await self._hello(reader, writer)
            return True
        except Exception as error:
            self.failed_handshakes += 1
            reason = "no hello in time" if isinstance(error, TimeoutError) else str(error) or type(error).__name__
            log.debug("channel hello from %s failed: %s", peer, reason)
            return False
        finally:
            self._unauthenticated -= 1

    async def _hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonce = os.urandom(_NONCE_BYTES)
        writer.write(_SERVER_HELLO.pack(MAGIC, defaults.WIRE_PROTOCOL_VERSION, nonce))
        hello = await reader.readexactly(_CLIENT_HELLO.size)
        writer.write(_check_client_hello(self._token, nonce, hello))
        await writer.drain()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        while True:
            data, buffers = await _read_frame(reader, peer)
            writer.writelines(await self._call(data, buffers, peer))
            await writer.drain()

    async def _call(self, data: bytes, buffers: list[bytes], peer: str) -> Parts:
        """The reply to one whole request frame: whatever happens, the stream stays in step."""
        try:
            partition, method, args = _request(safe_pickle.loads(data, buffers, peer), peer)
        except BadFrame as error:
            log.debug("channel request from %s refused: %s", peer, error)
            return _reply(False, error, peer)
        try:
            return _reply(True, await self._dispatch(partition, method, args), peer)
        except Exception as error:
            return _reply(False, error, peer)


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


def _no_delay(sock: socket.socket | None) -> None:
    # Small frames must leave at once, not wait for Nagle's algorithm.
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _keep_alive(sock: socket.socket | None) -> None:
    """Notice a peer whose host vanished (no reset ever comes) within seconds, not
    at the call's timeout: a process that dies closes its sockets, a lost node does not."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = (("TCP_KEEPIDLE", defaults.KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3))
    for option, value in options:
        if hasattr(socket, option):  # Linux; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


# ----------------------------------------------------------- blocking client


class Connection:
    """One blocking connection; one call at a time.

    Connecting (TCP, TLS, hello) takes at most ``CONNECT_TIMEOUT_S`` (or ``timeout_s``,
    if shorter) and raises ``ChannelBroken(connecting=True)`` when it fails, or
    ``IncompatiblePeer``.
    """

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        self.endpoint = endpoint
        self._peer = _name(endpoint)
        context = _client_tls(endpoint)
        deadline = time.monotonic() + min(timeout_s, defaults.CONNECT_TIMEOUT_S)
        try:
            sock = socket.create_connection((endpoint.host, endpoint.port), timeout=_left(deadline))
        except OSError as error:
            raise ChannelBroken(f"cannot connect to {self._peer}: {error}", connecting=True) from None
        try:
            _no_delay(sock)
            _keep_alive(sock)
            if context is not None:
                sock.settimeout(_left(deadline))
                sock = context.wrap_socket(sock, server_hostname=endpoint.host)
            self._sock = sock
            self._hello(_ClientHello(endpoint), deadline)
        except (OSError, EOFError) as error:
            sock.close()
            raise ChannelBroken(f"cannot connect to {self._peer}: {error}", connecting=True) from None
        except BaseException:
            sock.close()
            raise

    def _hello(self, hello: _ClientHello, deadline: float) -> None:
        self._sock.settimeout(_left(deadline))
        self._sock.sendall(hello.answer(self._read(_SERVER_HELLO.size)))
        self._sock.settimeout(_left(deadline))
        hello.check(self._read(_PROOF_BYTES))

    def request(self, partition: str, method: str, args: tuple[Any, ...]) -> None:
        parts = _frame((partition, method, args), self._peer)  # before a byte goes: the stream stays in step
        try:
            for part in parts:
                self._sock.sendall(part)
        except OSError as error:
            self.close()
            raise ChannelBroken(f"sending to {self._peer}: {error}") from None

    def reply(self, timeout_s: float) -> Any:
        """The reply to the last request: its result, or the error it raised."""
        try:
            self._sock.settimeout(timeout_s)
            size, count = _sizes(self._read(_HEADER.size), self._peer)
            lengths = _lengths(self._read(_LENGTH.size * count), size, self._peer)
            data = self._read(size)
            buffers = [self._read(length) for length in lengths]
        except (OSError, EOFError) as error:
            self.close()
            raise ChannelBroken(f"no reply from {self._peer}: {error}") from None
        except BaseException:  # a header out of step or past the limits: nothing after it can be trusted
            self.close()
            raise
        # The frame was read whole: whatever it holds, the connection is in step.
        return _result(safe_pickle.loads(data, buffers, self._peer), self._peer)

    def _read(self, size: int) -> bytearray:
        buffer = bytearray(size)  # sizes were checked against the limits first
        view = memoryview(buffer)
        got = 0
        while got < size:
            count = self._sock.recv_into(view[got:])
            if not count:
                raise EOFError("connection closed")
            got += count
        return buffer

    def close(self) -> None:
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0


def _left(deadline: float) -> float:
    # Never 0: a zero timeout would make the socket non-blocking instead of failing at once.
    return max(deadline - time.monotonic(), 0.001)


class Pool:
    """Idle blocking connections by endpoint, shared by the threads of a process."""

    def __init__(self) -> None:
        self._idle: dict[Endpoint, list[Connection]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def take(self, endpoint: Endpoint, timeout_s: float) -> Connection:
        with self._lock:
            if self._pid != os.getpid():
                # A forked child must not speak on its parent's connections: the
                # replies would go to whichever process reads first.
                self._idle, self._pid = {}, os.getpid()
            idle = self._idle.get(endpoint)
            if idle:
                return idle.pop()
        return Connection(endpoint, timeout_s)

    def give_back(self, connection: Connection) -> None:
        if not connection.closed:
            with self._lock:
                self._idle.setdefault(connection.endpoint, []).append(connection)

    def forget(self, endpoint: Endpoint) -> None:
        """Close the idle connections to a server that failed."""
        with self._lock:
            idle = self._idle.pop(endpoint, [])
        for connection in idle:
            connection.close()


# --------------------------------------------------------- awaitable client

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(endpoint: Endpoint) -> Stream:
    """A connection that passed the hello, within ``CONNECT_TIMEOUT_S``."""
    context = _client_tls(endpoint)
    try:
        async with asyncio.timeout(defaults.CONNECT_TIMEOUT_S):  # not wait_for: see Server._admit
            return await _open(endpoint, context)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
        reason = "timed out" if isinstance(error, TimeoutError) else str(error) or type(error).__name__
        raise ChannelBroken(f"cannot connect to {_name(endpoint)}: {reason}", connecting=True) from None


async def _open(endpoint: Endpoint, context: ssl.SSLContext | None) -> Stream:
    host = endpoint.host if context is not None else None
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port, ssl=context, server_hostname=host)
    try:
        _no_delay(writer.get_extra_info("socket"))
        _keep_alive(writer.get_extra_info("socket"))
        hello = _ClientHello(endpoint)
        writer.write(hello.answer(await reader.readexactly(_SERVER_HELLO.size)))
        hello.check(await reader.readexactly(_PROOF_BYTES))
    except BaseException:  # refused, timed out or cancelled: nothing may use this connection
        writer.close()
        raise
    return reader, writer


class AsyncPool:
    """Idle asyncio connections by endpoint, for one event loop."""

    def __init__(self) -> None:
        self._idle: dict[Endpoint, list[Stream]] = {}

    async def call(self, endpoint: Endpoint, partition: str, method: str, args: tuple[Any, ...]) -> Any:
        """One call; the caller bounds its time (a cancelled call's connection is dropped)."""
        peer = _name(endpoint)
        parts = _frame((partition, method, args), peer)
        idle = self._idle.get(endpoint)
        writer: asyncio.StreamWriter | None = None
        try:
            if idle:
                reader, writer = idle.pop()
            else:
                reader, writer = await _connect(endpoint)
            writer.writelines(parts)
            await writer.drain()
            data, buffers = await _read_frame(reader, peer)
        except (OSError, asyncio.IncompleteReadError) as error:
            if writer is not None:
                writer.close()
            raise ChannelBroken(f"call to {peer} failed: {error!r}") from None
        except BaseException:  # cancelled, timed out or out of step mid-call: a later reply would not match
            if writer is not None:
                writer.close()
            raise
        self._idle.setdefault(endpoint, []).append((reader, writer))  # read whole: in step
        return _result(safe_pickle.loads(data, buffers, peer), peer)

    def forget(self, endpoint: Endpoint) -> None:
        for _, writer in self._idle.pop(endpoint, []):
            writer.close()

    def close(self) -> None:
        for endpoint in list(self._idle):
            self.forget(endpoint)
