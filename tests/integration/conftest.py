"""A real local Ray for integration tests, and a fresh queue name per test."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray

import rayqueue
from rayqueue.transport.direct import TRANSPORT

pytestmark = pytest.mark.integration


def start_ray(namespace: str, **options: Any) -> None:
    # address="local" never joins a cluster someone else started on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=namespace, log_to_driver=False, **options)


@pytest.fixture
def ray_starter() -> Callable[..., None]:
    """For tests that start and stop Ray themselves."""
    return start_ray


@pytest.fixture(scope="module")
def storage_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return "file://" + str(tmp_path_factory.mktemp("storage"))


@pytest.fixture(scope="module")
def client(storage_url: str) -> Iterator[rayqueue.Client]:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    start_ray(namespace)
    try:
        yield rayqueue.connect(storage=storage_url, namespace=namespace)
    finally:
        ray.shutdown()


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name[:50]) + "-" + uuid.uuid4().hex[:6]


@pytest.fixture
def queue(client: rayqueue.Client, queue_name: str) -> rayqueue.Queue:
    return client.create_queue(queue_name, max_messages=1000, max_message_bytes=1024, visibility_timeout_s=30)


@pytest.fixture(params=["direct", "ray"])
def each_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test once per transport of this process's handles: the direct sockets, and
    Ray actor calls (``RAYQUEUE_CHANNEL=ray``). The queue's contract holds on both."""
    through_ray = request.param == "ray"
    TRANSPORT.reset()
    monkeypatch.setattr(TRANSPORT, "always_through_ray", through_ray)
    yield request.param
    if through_ray:
        assert TRANSPORT.asked() == 0, "a call went to a socket although every call was to go through Ray"
    TRANSPORT.reset()
