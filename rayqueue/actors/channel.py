"""Partition calls over the direct channel (``rayqueue.wire``).

A route names each partition by its Ray actor handle (or, for a partition in a
shared host, by the host's handle and the partition's name). The first call to
an actor asks it, through Ray, for its channel endpoint; later calls go
straight to the socket. An endpoint that fails is forgotten, so the retry asks
Ray again, which also waits out an actor that Ray is restarting (on a new port).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import ray

from rayqueue.actors.host import HostedPartition
from rayqueue.wire import AsyncPool, ChannelBroken, Connection, Endpoint, Pool

#: ``ActorTableData.ActorState`` RESTARTING and DEAD in Ray's GCS protocol. (A handle
#: that came from elsewhere may show an early state for a while: only these count.)
_GONE = (3, 4)
_endpoints: dict[Any, Endpoint] = {}
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
        state = ray._private.worker.global_worker.core_worker.get_local_actor_state(actor._actor_id)
    except Exception:  # no such view in this Ray version: rely on the connection alone
        return True
    return state not in _GONE


def _forget(actor: Any, endpoint: Endpoint | None) -> None:
    _endpoints.pop(actor._actor_id, None)
    if endpoint is not None:
        _pool.forget(endpoint)
        for pool in list(_async_pools.values()):
            pool.forget(endpoint)


class Pending:
    """A blocking call that was sent; ``result`` waits for its reply."""

    def __init__(self, handle: Any, method: str, args: tuple[Any, ...], timeout_s: float) -> None:
        self._actor, name = _address(handle)
        if not _alive(self._actor):
            _forget(self._actor, _endpoints.get(self._actor._actor_id))
            raise ChannelBroken(f"Ray reports actor {self._actor._actor_id.hex()} is not alive")
        self._endpoint = _endpoints.get(self._actor._actor_id)
        if self._endpoint is None:
            self._endpoint = ray.get(self._actor.wire_endpoint.remote(), timeout=timeout_s)
            _endpoints[self._actor._actor_id] = self._endpoint
        try:
            self._connection: Connection = _pool.take(self._endpoint, timeout_s)
            self._connection.request(name, method, args)
        except ChannelBroken:
            _forget(self._actor, self._endpoint)
            raise

    def result(self, timeout_s: float) -> Any:
        """The call's result; raises what the partition raised, or ``ChannelBroken``."""
        try:
            value = self._connection.reply(timeout_s)
        except ChannelBroken:
            _forget(self._actor, self._endpoint)
            raise
        except BaseException:
            _pool.give_back(self._connection)  # the reply was read: the connection is in step
            raise
        _pool.give_back(self._connection)
        return value


async def call_async(handle: Any, method: str, args: tuple[Any, ...]) -> Any:
    """One call from an event loop; the caller bounds its time."""
    actor, name = _address(handle)
    if not _alive(actor):
        _forget(actor, _endpoints.get(actor._actor_id))
        raise ChannelBroken(f"Ray reports actor {actor._actor_id.hex()} is not alive")
    endpoint = _endpoints.get(actor._actor_id)
    if endpoint is None:
        endpoint = await actor.wire_endpoint.remote()
        _endpoints[actor._actor_id] = endpoint
    loop = asyncio.get_running_loop()
    pool = _async_pools.get(loop)
    if pool is None:
        pool = _async_pools[loop] = AsyncPool()
    try:
        return await pool.call(endpoint, name, method, args)
    except ChannelBroken:
        _forget(actor, endpoint)
        raise
