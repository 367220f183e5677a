"""Joining Ray and finding (or starting) the coordinator.

Both steps fail fast with an error that says what to do, rather than retrying:

- a Ray address that nothing answers at (a dead ``RAY_ADDRESS``, or the "current
  cluster" file that a Ray which ended without shutting down leaves in Ray's temp
  folder) raises ``RayUnavailable`` within ``RAY_CONNECT_TIMEOUT_S``;
- storage is checked once, from inside the cluster, before a coordinator starts:
  missing credentials, an endpoint nobody answers at or a missing bucket raise
  ``StorageUnavailable`` naming the cause;
- a coordinator whose constructor failed is reported with its cause, not Ray's
  whole traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import fsspec
import ray
from ray.exceptions import RayError

from rayqueue import defaults
from rayqueue.actors.coordinator_actor import RemoteCoordinator
from rayqueue.errors import CoordinatorUnavailable, RayQueueError, RayUnavailable, StorageMismatch, StorageUnavailable
from rayqueue.transport.direct import unwrap
from rayqueue.transport.drivers import call_coordinator

#: Internal KV key (per namespace) holding a digest of the running coordinator's storage options.
_OPTIONS_KEY = b"rayqueue:storage-options-digest"
#: Local filesystems: checked for a writable folder rather than asked over the network.
_LOCAL_PROTOCOLS = {"file", "local"}


# ------------------------------------------------------------------ joining Ray


@dataclass(frozen=True)
class RayTarget:
    """The Ray cluster ``ray.init`` would join, and where that address came from."""

    #: ``host:port`` or ``ray://host:port``; None means "start a fresh local Ray".
    address: str | None
    #: "argument", "RAY_ADDRESS", or the path of Ray's current-cluster file.
    source: str


def ray_target(address: str | None) -> RayTarget:
    """Resolve ``address`` the way ``ray.init`` does, without connecting."""
    if address:
        source = "argument"
    elif os.environ.get("RAY_ADDRESS"):
        address, source = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    else:
        source = "none"
    if address == "local":
        return RayTarget(None, source)
    if address in (None, "auto"):
        from ray._common.utils import get_ray_address_file  # how ray.init finds "the" cluster

        path = get_ray_address_file(None)
        try:
            with open(path) as file:
                found = file.read().strip()
        except OSError:
            found = ""
        if found:
            return RayTarget(found, path)
        if address == "auto":
            raise RayUnavailable("RAY_ADDRESS=auto, but no Ray cluster runs on this machine; start one with ray start")
        return RayTarget(None, "none")
    return RayTarget(address, source)


def check_reachable(target: RayTarget, timeout_s: float = defaults.RAY_CONNECT_TIMEOUT_S) -> None:
    """Raise RayUnavailable, saying what to do, if nothing listens at ``target``.

    A listening port is not proof of a live Ray (another program may have taken
    it), but a dead cluster's port refuses at once, which is the common case."""
    if target.address is None:
        return
    host, sep, port = target.address.split("://")[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port: Ray's own error
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise RayUnavailable(
            f"cannot reach Ray: nothing answers at {target.address} ({error.strerror or error}); " + _advice(target),
            address=target.address,
            source=target.source,
        ) from None


def _advice(target: RayTarget) -> str:
    if target.source == "argument":
        return "check the address, or start that cluster (ray start --head)"
    if target.source == "RAY_ADDRESS":
        return "the address came from RAY_ADDRESS: fix it, or set RAY_ADDRESS=local to start a local Ray"
    return (
        f"the address came from {target.source}, which a Ray that ended without shutting down "
        "leaves behind: run `ray stop` (it stops every Ray on this machine and clears the file), "
        "or set RAY_ADDRESS=local to start a fresh local Ray"
    )


def choose_auth_mode(target: RayTarget) -> None:
    """Decide RAY_AUTH_MODE, if the user has not, as Ray would decide it, but explicitly.

    Ray turns token authentication on for a new local Ray, and for a cluster it finds
    through its current-cluster file when a token exists, and then warns on every run
    that it did. rayqueue makes the same choice explicitly (``defaults.RAY_AUTH_MODE``),
    which Ray does not warn about. The variable is inherited by the workers and by
    ``ray`` commands run from this process. An explicit address is left to Ray."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if target.address is None:
        _set_auth_mode(defaults.RAY_AUTH_MODE)
    elif target.source not in ("argument", "RAY_ADDRESS") and _token_exists():
        _set_auth_mode("token")


def _set_auth_mode(mode: str) -> None:
    os.environ["RAY_AUTH_MODE"] = mode
    # Ray's core reads its config once per process: refresh it, as Ray does when it
    # turns token authentication on itself (authentication_token_setup._enable_token_auth).
    from ray._raylet import Config  # type: ignore[attr-defined]  # compiled, no stubs

    Config.initialize("")


def _token_exists() -> bool:
    try:
        from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]  # compiled, no stubs

        return bool(AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True))
    except Exception:  # noqa: BLE001 - an older or newer Ray: leave the decision to it
        return False


def ensure_ray(address: str | None, namespace: str, **init_options: Any) -> None:
    """Attach to the cluster at ``address`` (or RAY_ADDRESS, or the one ``ray start``
    left running here), or start a local one; fail fast if that address is dead.

    Inside a Ray worker, or after the user's own ``ray.init``, Ray is already
    up and is used as it is.
    """
    if ray.is_initialized():
        return
    target = ray_target(address)
    check_reachable(target)
    choose_auth_mode(target)
    options = {"log_to_driver": True, **init_options}
    ray.init(address=target.address or "local", namespace=namespace, **options)


# ------------------------------------------------------------------ storage


def normalize_storage(url: str) -> str:
    """One spelling per location, so that equal storage compares equal."""
    if "://" not in url:
        url = "file://" + url
    if url.startswith("file://"):
        url = "file://" + os.path.abspath(os.path.expanduser(url[len("file://") :]))
    return url.rstrip("/")


def options_digest(options: dict[str, Any]) -> str:
    """A digest of storage options: compared across drivers without storing secrets."""
    text = json.dumps(options, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def check_storage(url: str, options: dict[str, Any], timeout_s: float = defaults.STORAGE_CHECK_S) -> None:
    """Raise StorageUnavailable naming the cause if ``url`` cannot be used at all.

    Missing or wrong credentials, a missing bucket and an unwritable folder fail
    at once; other errors (an endpoint that answers nothing, timeouts) are tried
    again until ``timeout_s`` has passed. One request: it runs once per coordinator
    start, never on a data path."""
    try:
        fs, root = fsspec.core.url_to_fs(url, **{"use_listings_cache": False, **options})
    except Exception as error:  # noqa: BLE001 - unknown protocol, missing package, bad option
        raise StorageUnavailable("open", url, _cause(error)) from None
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & _LOCAL_PROTOCOLS:
        _check_folder(root)
    elif "memory" not in protocols:
        _check_bucket(fs, root.split("/", 1)[0], timeout_s)


def _check_folder(root: str) -> None:
    folder = root
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise StorageUnavailable("write", root, f"PermissionError: {folder!r} is not a folder this user may write")


def _check_bucket(fs: Any, bucket: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fs.info(bucket)
            return
        except FileNotFoundError:
            raise StorageUnavailable("open", bucket, f"the bucket {bucket!r} does not exist") from None
        except Exception as error:  # noqa: BLE001 - everything else is named to the user
            if _permanent(error) or time.monotonic() + 0.2 > deadline:
                raise StorageUnavailable("open", bucket, _cause(error)) from None
            time.sleep(0.2)


def _permanent(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    credentials = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
    return isinstance(error, (PermissionError, ValueError)) or bool(names & credentials)


def _cause(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


@ray.remote(num_cpus=0, max_retries=0)
def _check_storage_in_cluster(url: str, options: dict[str, Any]) -> None:
    # Run where the coordinator will run: a driver outside the cluster may lack the
    # cluster's credentials or network, and the other way round.
    check_storage(url, options)


def _check_storage_remotely(url: str, options: dict[str, Any]) -> None:
    try:
        ray.get(_check_storage_in_cluster.remote(url, options), timeout=60 + defaults.STORAGE_CHECK_S)
    except RayError as error:
        cause = unwrap(error)
        if isinstance(cause, RayQueueError):
            raise cause from None
        raise StorageUnavailable("check", url, _cause(cause)) from None


# ------------------------------------------------------------------ the coordinator


def coordinator(namespace: str, storage: str | None, storage_options: dict[str, Any] | None) -> Any:
    """The namespace's coordinator, started on first use (after a storage check).

    Raises StorageMismatch if the running coordinator uses another URL, or (when
    ``storage_options`` are given, non-empty) other options than those given."""
    requested = normalize_storage(storage) if storage else None
    options = dict(storage_options or {})
    try:
        handle: Any = ray.get_actor(defaults.COORDINATOR_NAME, namespace=namespace)
    except ValueError:
        url = requested or normalize_storage(defaults.STORAGE)
        _check_storage_remotely(url, options)
        handle = RemoteCoordinator.options(
            name=defaults.COORDINATOR_NAME,
            namespace=namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
        ).remote(namespace, url, options)
        _remember_options(namespace, options)
    existing = _storage_url(handle, requested or normalize_storage(defaults.STORAGE))
    if requested is not None and requested != existing:
        raise StorageMismatch(requested, existing)
    if options and _known_options(namespace) not in (None, options_digest(options)):
        raise StorageMismatch(f"{existing} (with other storage_options)", existing)
    return handle


def _storage_url(handle: Any, url: str) -> str:
    """The coordinator's storage URL; a coordinator that could not start is named with its cause."""
    try:
        return call_coordinator(handle, "storage_url")
    except RayQueueError as error:
        died = error.__cause__
        if not getattr(died, "actor_init_failed", False):
            raise
        cause = _last_line(str(died))
        if "StorageUnavailable" in cause or "Storage" in cause:
            raise StorageUnavailable("open", url, cause) from None
        raise CoordinatorUnavailable("start", f"it could not start: {cause}") from None


def _last_line(text: str) -> str:
    """The exception line at the end of a Ray creation-task traceback."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def _remember_options(namespace: str, options: dict[str, Any]) -> None:
    """Record which options this driver started the coordinator with (a digest, no secrets).

    Best effort: two drivers starting the same coordinator at once may record the
    loser's options; the coordinator itself does not report its options."""
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_put(_OPTIONS_KEY, options_digest(options).encode(), namespace=namespace)
    except Exception:  # noqa: BLE001 - only the mismatch check depends on it
        pass


def _known_options(namespace: str) -> str | None:
    from ray.experimental import internal_kv

    try:
        value = internal_kv._internal_kv_get(_OPTIONS_KEY, namespace=namespace)
    except Exception:  # noqa: BLE001
        return None
    return value.decode() if value else None
