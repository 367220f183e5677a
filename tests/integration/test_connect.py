"""connect() on a real local Ray: storage is checked once, before the coordinator starts,
and a running coordinator's storage (URL and options) is not silently switched."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import ray

import rayqueue
from rayqueue.errors import StorageMismatch, StorageUnavailable

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def namespace_ray(seaweed: Any) -> str:
    namespace = f"connect-{uuid.uuid4().hex[:8]}"
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        namespace=namespace,
        log_to_driver=False,
        runtime_env={"env_vars": seaweed.env_vars},
    )
    yield namespace
    ray.shutdown()


def test_a_missing_bucket_fails_at_once_naming_it(seaweed: Any, namespace_ray: str):
    options = seaweed.storage_options
    with pytest.raises(StorageUnavailable, match="no-such-bucket.*does not exist"):
        rayqueue.connect(storage="s3://no-such-bucket/rq", storage_options=options, namespace="missing-bucket")


def test_wrong_credentials_fail_at_once_naming_the_cause(seaweed: Any, namespace_ray: str):
    options = {**seaweed.storage_options, "secret": "wrong"}
    with pytest.raises(StorageUnavailable, match="PermissionError"):
        rayqueue.connect(storage=seaweed.url("rq"), storage_options=options, namespace="wrong-key")
    # nothing was started: the namespace has no coordinator to trip over later
    with pytest.raises(ValueError):
        ray.get_actor("rayqueue-coordinator", namespace="wrong-key")


def test_other_storage_options_than_the_running_coordinators_are_refused(seaweed: Any, namespace_ray: str):
    url = seaweed.url(f"opts-{uuid.uuid4().hex[:6]}")
    options = seaweed.storage_options
    client = rayqueue.connect(storage=url, storage_options=options, namespace="options")
    assert client.list_queues() == []
    assert rayqueue.connect(storage=url, namespace="options").storage == url  # none given: the running ones
    assert rayqueue.connect(storage=url, storage_options=dict(options), namespace="options").storage == url
    with pytest.raises(StorageMismatch, match="storage_options"):
        rayqueue.connect(storage=url, storage_options={**options, "key": "other"}, namespace="options")
    ray.kill(ray.get_actor("rayqueue-coordinator", namespace="options"))
