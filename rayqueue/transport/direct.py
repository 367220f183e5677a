"""Partition calls over the direct channel (``rayqueue.transport.wire``), or through Ray.

A route names each partition by its Ray actor handle (or, for a partition in a
shared host, by the host's handle and the partition's name). The first call to
an actor asks it, through Ray, for its channel endpoint; later calls go
straight to the socket. An endpoint that fails is forgotten, so the retry asks
Ray again, which also waits out an actor that Ray is restarting (on a new port).

Bulky calls (tens of megabytes of Arrow data either way) go through Ray: its object
store moves large buffers faster than a socket read by asyncio does.

Where the socket cannot be reached although Ray says the actor lives (a
firewall that lets only Ray's ports through, a driver outside the cluster's
network), calls to that actor go through Ray for a while instead: slower, never
broken. An actor that serves no channel (its endpoint is None: Ray uses TLS and
the channel could not) is always called through Ray. ``RAYQUEUE_CHANNEL=ray``
sends every call through Ray.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from typing import Any

import ray
from ray.exceptions import RayTaskError

from rayqueue.actors.hosted import HostedPartition
from rayqueue.transport.wire import AsyncPool, ChannelBroken, Connection, Endpoint, Parked, Pool

log = logging.getLogger(__name__)

#: ``ActorTableData.ActorState`` RESTARTING and DEAD in Ray's GCS protocol. (A handle
#: that came from elsewhere may show an early state for a while: only these count.)
_GONE = (3, 4)
#: After an unreachable socket, an actor's calls go through Ray this long, then the socket is tried again.
RAY_FALLBACK_S = 60.0

#: Each actor's endpoint, once asked; None when the actor serves no channel.
_endpoints: dict[Any, Endpoint | None] = {}
_through_ray_until: dict[Any, float] = {}
_pool = Pool()
_async_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncPool] = weakref.WeakKeyDictionary()


def _address(handle: Any) -> tuple[Any, str]:
    """The actor that serves ``handle``'s calls, and the partition name to put in them."""
    if isinstance(handle, HostedPartition):
        return handle.host, handle.name
    return handle, ""


def _alive(actor: Any) -> bool:
    """Ray's own view of the actor, which its notifications keep current and which
    costs nothing to read. A process Ray declared dead may linger (or, on a lost node,
    live on, unreachable to Ray but not to us): calls must stop going there."""
    try:
        state = ray._private.worker.global_worker.core_worker.get_local_actor_state(actor._actor_id)  # type: ignore[attr-defined]
    except Exception:  # no such view in this Ray version: rely on the connection alone
        return True
    return state not in _GONE


def _through_ray(actor: Any) -> bool:
    if os.environ.get("RAYQUEUE_CHANNEL") == "ray":
        return True
    return _through_ray_until.get(actor._actor_id, 0.0) > time.monotonic()


def _unreachable(actor: Any, endpoint: Endpoint, error: ChannelBroken) -> bool:
    """After a failed connect: whether to go through Ray (the actor lives, its port is
    out of reach) rather than retry (the actor is gone)."""
    if not _alive(actor):
        return False
    log.warning(
        "cannot reach %s:%d (%s); calls go through Ray for %.0f s", endpoint.host, endpoint.port, error, RAY_FALLBACK_S
    )
    _through_ray_until[actor._actor_id] = time.monotonic() + RAY_FALLBACK_S
    return True


def _forget(actor: Any, endpoint: Endpoint | None) -> None:
    _endpoints.pop(actor._actor_id, None)
    if endpoint is not None:
        _pool.forget(endpoint)
        for pool in list(_async_pools.values()):
            pool.forget(endpoint)


def _check_alive(actor: Any) -> None:
    if not _alive(actor):
        _forget(actor, _endpoints.get(actor._actor_id))
        raise ChannelBroken(f"Ray reports actor {actor._actor_id.hex()} is not alive")


def unwrap(error: BaseException) -> BaseException:
    """The exception the actor raised, as it raised it."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


class Pending:
    """A blocking call that was sent; ``result`` waits for its reply."""

    def __init__(self, handle: Any, method: str, args: tuple[Any, ...], timeout_s: float, bulky: bool = False) -> None:
        self._handle = handle
        self._actor, name = _address(handle)
        _check_alive(self._actor)
        self._ref: ray.ObjectRef[Any] | None = None
        if bulky or _through_ray(self._actor):
            self._ref = getattr(handle, method).remote(*args)
            return
        if self._actor._actor_id not in _endpoints:
            _endpoints[self._actor._actor_id] = ray.get(self._actor.wire_endpoint.remote(), timeout=timeout_s)
        endpoint = _endpoints.get(self._actor._actor_id)
        if endpoint is None:  # no channel (or forgotten meanwhile): through Ray
            self._ref = getattr(handle, method).remote(*args)
            return
        self._endpoint = endpoint
        try:
            self._connection: Connection = _pool.take(self._endpoint, timeout_s)
        except ChannelBroken as error:
            _forget(self._actor, self._endpoint)
            if not _unreachable(self._actor, self._endpoint, error):
                raise
            self._ref = getattr(handle, method).remote(*args)
            return
        try:
            self._connection.request(name, method, args)
        except ChannelBroken:
            _forget(self._actor, self._endpoint)
            raise

    def result(self, timeout_s: float) -> Any:
        """The call's result; raises what the partition raised, or ``ChannelBroken``
        (or Ray's errors, when the call went through Ray)."""
        if self._ref is not None:
            try:
                return ray.get(self._ref, timeout=timeout_s)
            except RayTaskError as error:
                raise unwrap(error) from None
        try:
            value = self._connection.reply(timeout_s)
        except ChannelBroken:
            _forget(self._actor, self._endpoint)
            raise
        except BaseException:
            _pool.give_back(self._connection)  # the reply was read: the connection is in step
            raise
        _pool.give_back(self._connection)
        if isinstance(value, Parked):
            self._ref = self._handle.take_parked.remote(value.token)
            return self.result(timeout_s)
        return value


async def _endpoint_async(actor: Any) -> Endpoint | None:
    """The actor's endpoint (asked through Ray the first time); None: it serves no channel."""
    if actor._actor_id not in _endpoints:
        _endpoints[actor._actor_id] = await actor.wire_endpoint.remote()
    return _endpoints.get(actor._actor_id)


async def call_async(handle: Any, method: str, args: tuple[Any, ...], bulky: bool = False) -> Any:
    """One call from an event loop; the caller bounds its time."""
    actor, name = _address(handle)
    _check_alive(actor)
    endpoint = None if bulky or _through_ray(actor) else await _endpoint_async(actor)
    if endpoint is not None:
        loop = asyncio.get_running_loop()
        pool = _async_pools.get(loop)
        if pool is None:
            pool = _async_pools[loop] = AsyncPool()
        try:
            value = await pool.call(endpoint, name, method, args)
            if not isinstance(value, Parked):
                return value
            method, args = "take_parked", (value.token,)  # too large for the socket: fetch it through Ray
        except ChannelBroken as error:
            _forget(actor, endpoint)
            if not (error.connecting and _unreachable(actor, endpoint, error)):
                raise
    try:
        return await getattr(handle, method).remote(*args)
    except RayTaskError as error:
        raise unwrap(error) from None
