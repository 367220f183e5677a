"""Data calls to partition actors, behind one seam: over each actor's socket, or through Ray.

A route names each partition by its Ray actor handle (or, for a partition in a
shared host, by the host's handle and the partition's name). ``DirectTransport``
asks an actor once, through Ray, for its channel endpoint; later calls go
straight to the socket (``rayqueue.transport.wire``). An endpoint that fails is
forgotten, so the retry asks Ray again, which also waits out an actor that Ray is
restarting (on a new port).

``RayTransport`` makes the same calls as Ray actor calls. ``DirectTransport.through_ray``
is the one place that chooses it:

- a bulky call (``is_bulky``: tens of megabytes of Arrow data either way): Ray's
  object store moves large buffers faster than a socket read by asyncio does;
- an actor that serves no channel (its endpoint is None: Ray uses TLS and the
  channel could not);
- an actor whose socket cannot be reached although Ray says it lives (a firewall
  that lets only Ray's ports through, a driver outside the cluster's network):
  through Ray for ``RAY_FALLBACK_S``, then the socket is tried again;
- every call, with ``RAYQUEUE_CHANNEL=ray`` (or ``always_through_ray``).

A reply too large for the socket is parked by the partition and fetched through Ray.
Each process has one ``TRANSPORT`` (reset in a forked child, which must not speak
on its parent's connections); tests make their own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from typing import Any, Protocol

import ray
from ray.exceptions import RayTaskError

from rayqueue import defaults
from rayqueue.actors.hosted import HostedPartition
from rayqueue.transport import liveness
from rayqueue.transport.wire import AsyncPool, ChannelBroken, Connection, Endpoint, Parked, Pool

log = logging.getLogger(__name__)


def is_bulky(nbytes: int) -> bool:
    """Whether a call carrying ``nbytes`` (either way) goes through Ray rather than a socket."""
    return nbytes >= defaults.BULKY_CALL_BYTES


def unwrap(error: BaseException) -> BaseException:
    """The exception the actor raised, as it raised it."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def _address(handle: Any) -> tuple[Any, str]:
    """The actor that serves ``handle``'s calls, and the partition name to put in them."""
    if isinstance(handle, HostedPartition):
        return handle.host, handle.name
    return handle, ""


class Pending(Protocol):
    """A blocking call that was sent; ``result`` waits for its reply and raises what the
    partition raised, ``ChannelBroken`` (the call may or may not have run), or Ray's errors."""

    def result(self, timeout_s: float) -> Any: ...


class _ThroughRay:
    def __init__(self, ref: ray.ObjectRef[Any]) -> None:
        self._ref = ref

    def result(self, timeout_s: float) -> Any:
        try:
            return ray.get(self._ref, timeout=timeout_s)
        except RayTaskError as error:
            raise unwrap(error) from None


class RayTransport:
    """Partition calls as Ray actor calls."""

    def start(self, handle: Any, method: str, args: tuple[Any, ...]) -> Pending:
        return _ThroughRay(getattr(handle, method).remote(*args))

    async def call(self, handle: Any, method: str, args: tuple[Any, ...]) -> Any:
        try:
            return await getattr(handle, method).remote(*args)
        except RayTaskError as error:
            raise unwrap(error) from None


class _OverSocket:
    def __init__(self, transport: DirectTransport, handle: Any, endpoint: Endpoint, connection: Connection) -> None:
        self._transport = transport
        self._handle = handle
        self._endpoint = endpoint
        self._connection = connection

    def result(self, timeout_s: float) -> Any:
        try:
            value = self._connection.reply(timeout_s)
        except ChannelBroken:
            self._transport.forget(_address(self._handle)[0], self._endpoint)
            raise
        finally:
            self._transport.give_back(self._connection)  # kept only if still in step
        if isinstance(value, Parked):  # too large for the socket: fetch it through Ray
            return self._transport.ray.start(self._handle, "take_parked", (value.token,)).result(timeout_s)
        return value


class DirectTransport:
    """Partition calls over each actor's socket, through Ray where ``through_ray`` says.

    Holds this process's endpoints, connection pools and fallbacks. Blocking calls
    (``start``) may come from any thread; ``call`` from any event loop.
    """

    def __init__(self, *, always_through_ray: bool | None = None) -> None:
        self.ray = RayTransport()
        #: Every call through Ray: the reference path, and the one for clusters where only
        #: Ray's ports are open. None: as ``RAYQUEUE_CHANNEL`` says at each call (an
        #: environment variable a program or test may set after importing rayqueue).
        self.always_through_ray = always_through_ray
        self.reset()

    def reset(self) -> None:
        """Forget every endpoint and connection (in a forked child: they are the parent's)."""
        #: Each actor's endpoint, once asked; None when the actor serves no channel.
        self._endpoints: dict[Any, Endpoint | None] = {}
        self._through_ray_until: dict[Any, float] = {}
        self._pool = Pool()
        self._async_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncPool] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------ the one choice

    def through_ray(self, actor: Any, bulky: bool = False) -> bool:
        """Whether a call to ``actor`` goes through Ray rather than its socket (an actor
        with no channel shows as a None endpoint, found once it has been asked)."""
        if bulky or self._all_through_ray():
            return True
        if actor._actor_id in self._endpoints and self._endpoints[actor._actor_id] is None:
            return True
        return self._through_ray_until.get(actor._actor_id, 0.0) > time.monotonic()

    def _all_through_ray(self) -> bool:
        if self.always_through_ray is not None:
            return self.always_through_ray
        return os.environ.get("RAYQUEUE_CHANNEL") == "ray"

    def _unreachable(self, actor: Any, endpoint: Endpoint, error: ChannelBroken) -> bool:
        """After a failed connect: whether to go through Ray (the actor lives, its port is
        out of reach) rather than retry (the actor is gone)."""
        if not liveness.alive(actor):
            return False
        log.warning(
            "cannot reach %s:%d (%s); calls go through Ray for %.0f s",
            endpoint.host,
            endpoint.port,
            error,
            defaults.RAY_FALLBACK_S,
        )
        self._through_ray_until[actor._actor_id] = time.monotonic() + defaults.RAY_FALLBACK_S
        return True

    # ------------------------------------------------------------ state

    def endpoint(self, actor: Any) -> Endpoint | None:
        """The endpoint this transport holds for ``actor`` (None if none, or none asked)."""
        return self._endpoints.get(actor._actor_id)

    def asked(self) -> int:
        """How many actors this transport has asked for an endpoint (and still remembers)."""
        return len(self._endpoints)

    def remember(self, actor: Any, endpoint: Endpoint | None) -> None:
        self._endpoints[actor._actor_id] = endpoint

    def forget(self, actor: Any, endpoint: Endpoint | None = None) -> None:
        """Drop what is known of ``actor`` (its endpoint, fallback, idle connections to it)."""
        endpoint = endpoint or self._endpoints.get(actor._actor_id)
        self._endpoints.pop(actor._actor_id, None)
        self._through_ray_until.pop(actor._actor_id, None)
        if endpoint is not None:
            self._pool.forget(endpoint)
            for pool in list(self._async_pools.values()):
                pool.forget(endpoint)

    def give_back(self, connection: Connection) -> None:
        self._pool.give_back(connection)

    def _check_alive(self, actor: Any) -> None:
        if not liveness.alive(actor):
            self.forget(actor)
            raise ChannelBroken(f"Ray reports actor {actor._actor_id.hex()} is not alive")

    def _endpoint_unknown(self, actor: Any, bulky: bool) -> bool:
        """Whether this call would go over the socket, whose endpoint is not known yet."""
        return not self.through_ray(actor, bulky) and actor._actor_id not in self._endpoints

    def _socket_for(self, actor: Any, bulky: bool) -> Endpoint | None:
        """The endpoint this call goes to; None: through Ray."""
        return None if self.through_ray(actor, bulky) else self._endpoints.get(actor._actor_id)

    # ------------------------------------------------------------ blocking calls

    def start(self, handle: Any, method: str, args: tuple[Any, ...], timeout_s: float, bulky: bool = False) -> Pending:
        """Send one call; its ``result`` waits for the reply."""
        actor, name = _address(handle)
        self._check_alive(actor)
        if self._endpoint_unknown(actor, bulky):
            self.remember(actor, self.ray.start(actor, "wire_endpoint", ()).result(timeout_s))
        endpoint = self._socket_for(actor, bulky)
        if endpoint is None:
            return self.ray.start(handle, method, args)
        try:
            connection = self._pool.take(endpoint, timeout_s)
        except ChannelBroken as error:
            self.forget(actor, endpoint)
            if not self._unreachable(actor, endpoint, error):
                raise
            return self.ray.start(handle, method, args)
        try:
            connection.request(name, method, args)
        except ChannelBroken:
            self.forget(actor, endpoint)
            raise
        return _OverSocket(self, handle, endpoint, connection)

    # ------------------------------------------------------------ awaitable calls

    async def call(self, handle: Any, method: str, args: tuple[Any, ...], bulky: bool = False) -> Any:
        """One call from an event loop; the caller bounds its time."""
        actor, name = _address(handle)
        self._check_alive(actor)
        if self._endpoint_unknown(actor, bulky):
            self.remember(actor, await self.ray.call(actor, "wire_endpoint", ()))
        endpoint = self._socket_for(actor, bulky)
        if endpoint is None:
            return await self.ray.call(handle, method, args)
        pool = self._async_pools.setdefault(asyncio.get_running_loop(), AsyncPool())
        try:
            value = await pool.call(endpoint, name, method, args)
        except ChannelBroken as error:
            self.forget(actor, endpoint)
            if not (error.connecting and self._unreachable(actor, endpoint, error)):
                raise
            return await self.ray.call(handle, method, args)
        if isinstance(value, Parked):  # too large for the socket: fetch it through Ray
            return await self.ray.call(handle, "take_parked", (value.token,))
        return value


#: This process's transport.
TRANSPORT = DirectTransport()
os.register_at_fork(after_in_child=TRANSPORT.reset)
