"""The private Ray API behind liveness (rayqueue.transport.liveness) is in the pinned Ray, as used.

If a Ray upgrade removes or changes it, these fail loudly here, rather than every
handle silently trusting sockets to actors that Ray declared dead.
"""

from __future__ import annotations

from ray._raylet import CoreWorker
from ray.core.generated.gcs_pb2 import ActorTableData

from rayqueue.transport import liveness


def test_the_core_worker_reads_an_actors_state_locally() -> None:
    method = getattr(CoreWorker, "get_local_actor_state", None)
    assert method is not None, "Ray no longer has CoreWorker.get_local_actor_state: rewrite liveness.alive"
    assert callable(method)


def test_the_states_that_mean_gone_are_restarting_and_dead() -> None:
    names = {ActorTableData.ActorState.Name(state) for state in liveness.GONE}
    assert names == {"RESTARTING", "DEAD"}
    assert "ALIVE" in ActorTableData.ActorState.keys()


def test_without_a_connection_to_ray_an_actor_counts_as_alive() -> None:
    class Handle:
        _actor_id = None  # never read: no core worker in a unit test

    assert liveness.alive(Handle())
