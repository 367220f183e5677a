"""Joining Ray and finding (or starting) the coordinator."""

from __future__ import annotations

import os
from typing import Any

import ray

from rayqueue import defaults
from rayqueue.actors.calls import call_coordinator
from rayqueue.actors.coordinator import RemoteCoordinator
from rayqueue.errors import StorageMismatch


def ensure_ray(address: str | None, namespace: str) -> None:
    """Attach to the cluster at ``address`` (or RAY_ADDRESS), or start a local one.

    Inside a Ray worker, or after the user's own ``ray.init``, Ray is already
    up and is used as it is.
    """
    if ray.is_initialized():
        return
    ray.init(address=address or os.environ.get("RAY_ADDRESS"), namespace=namespace, log_to_driver=True)


def normalize_storage(url: str) -> str:
    """One spelling per location, so that equal storage compares equal."""
    if "://" not in url:
        url = "file://" + url
    if url.startswith("file://"):
        url = "file://" + os.path.abspath(os.path.expanduser(url[len("file://") :]))
    return url.rstrip("/")


def coordinator(namespace: str, storage: str | None, storage_options: dict[str, Any] | None) -> Any:
    """The namespace's coordinator, started on first use; refuse a storage switch."""
    requested = normalize_storage(storage) if storage else None
    try:
        handle = ray.get_actor(defaults.COORDINATOR_NAME, namespace=namespace)
    except ValueError:
        handle = RemoteCoordinator.options(
            name=defaults.COORDINATOR_NAME,
            namespace=namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
        ).remote(namespace, requested or normalize_storage(defaults.STORAGE), dict(storage_options or {}))
    existing = call_coordinator(handle, "storage_url")
    if requested is not None and requested != existing:
        raise StorageMismatch(requested, existing)
    return handle
