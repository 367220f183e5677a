"""Whether Ray holds an actor for alive: the one place rayqueue uses a private Ray API.

A handle must stop calling a partition's socket as soon as Ray declares the actor
dead or restarting: a process Ray gave up on may linger, or (on a lost node) live
on, unreachable to Ray but not to a socket. Ray keeps each actor's state current in
the worker through its notifications, and reading it costs nothing, but only
through ``CoreWorker.get_local_actor_state``, which is not public.
``tests/unit/test_liveness.py`` fails if the pinned Ray lacks it or its states change.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.core.generated.gcs_pb2 import ActorTableData  # type: ignore[attr-defined]  # generated protobuf

#: The states in which an actor must not be called (a handle that came from elsewhere
#: may show an earlier state for a while: only these count).
GONE = frozenset({ActorTableData.ActorState.Value("RESTARTING"), ActorTableData.ActorState.Value("DEAD")})


def alive(actor: Any) -> bool:
    """False once Ray has declared ``actor`` dead or restarting; True otherwise
    (including when this process is not connected to Ray, so has no view)."""
    worker = ray._private.worker.global_worker
    core_worker = getattr(worker, "core_worker", None)
    if core_worker is None:
        return True
    return core_worker.get_local_actor_state(actor._actor_id) not in GONE
