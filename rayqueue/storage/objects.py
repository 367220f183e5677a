"""Put-once objects on any fsspec filesystem.

The whole storage contract rayqueue needs: create an object only if it does not
exist yet (atomically, with its full content), read it, list names under a
prefix, and delete. Transient failures are retried with backoff here, so callers
see either success or one clear error.

Errors fail closed on every backend: ``exists`` is False only when the backend
says the object is missing, and ``list`` is empty only when the prefix holds no
object; any other failure is retried, then raised as StorageUnavailable. (fsspec's
own ``exists`` answers False on any error, and its ``find`` on a local disk walks
with ``on_error="omit"``, turning an unreadable folder into an empty one.)
"""

from __future__ import annotations

import builtins
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from rayqueue import defaults
from rayqueue.backoff import Backoff
from rayqueue.errors import ObjectExists, StorageUnavailable

T = TypeVar("T")

_TEMP_MARK = ".tmp-"


def _lost_race(error: BaseException) -> bool:
    """Did a create-only write fail because the object already exists?

    AWS says FileExistsError. SeaweedFS's 412 names no condition, so s3fs makes it
    OSError(EINVAL) like any other refused request; only the botocore error it
    wraps tells them apart. (Matching text is no good: "412" is in ports and offsets.)
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, FileExistsError):
            return True
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code == "PreconditionFailed" or status == 412
        cause = cause.__cause__
    return False


def _permanent(error: BaseException) -> bool:
    # Retrying cannot fix these: the object is missing, or we may not touch it.
    return isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError))


class ObjectStore:
    """Objects under one root URL. Safe to use from several threads."""

    def __init__(
        self,
        url: str,
        options: dict[str, Any] | None = None,
        *,
        retry_s: float = defaults.STORAGE_RETRY_S,
    ) -> None:
        self.url = url.rstrip("/")
        # Other processes create and delete under the same root: a cached listing would
        # hide their objects (s3fs even answers size() from one). Caching stays opt-in.
        self.options = {"use_listings_cache": False, **(options or {})}
        self.fs, root = fsspec.core.url_to_fs(self.url, **self.options)
        self.root = root.rstrip("/")
        self._retry_s = retry_s
        self._local = isinstance(self.fs, LocalFileSystem)
        # fsspec's generic find walks with on_error="omit": such backends are walked here.
        self._walked = type(self.fs).find is AbstractFileSystem.find

    def __reduce__(self) -> tuple[Any, ...]:
        return (ObjectStore, (self.url, self.options), {"_retry_s": self._retry_s})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._retry_s = state["_retry_s"]

    def child(self, prefix: str) -> ObjectStore:
        """A store rooted at ``prefix`` under this one (same filesystem, same options)."""
        store = type(self).__new__(type(self))
        store.__dict__.update(self.__dict__)
        store.url = f"{self.url}/{prefix.strip('/')}"
        store.root = f"{self.root}/{prefix.strip('/')}"
        return store

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def put_once(self, name: str, data: bytes) -> None:
        """Create ``name`` holding ``data``; raise ObjectExists if it exists already
        with other content. Idempotent: an object with exactly these bytes is this
        writer's own (a retry of a put whose reply was lost, here or by a caller that
        retries later), since every name is written by one writer only and claims
        carry a token of their own.

        Returns only once the object is durable; readers never see a partial object.
        """
        path = self._path(name)

        def create() -> None:
            try:
                self._create(path, data)
            except ObjectExists:
                if self.fs.cat_file(path) == data:
                    return
                raise

        self._retrying("put", path, create)

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists. False only if the backend says it is missing: an
        error that leaves the answer unknown is retried, then raised."""
        path = self._path(name)

        def stat() -> bool:
            try:
                self.fs.info(path)
            except FileNotFoundError:
                return False
            return True

        return self._retrying("stat", path, stat)

    def _create(self, path: str, data: bytes) -> None:
        try:
            if self._local:
                _create_local(path, data)
            else:
                self.fs.pipe_file(path, data, mode="create")
        except Exception as error:
            if _lost_race(error):
                raise ObjectExists(path) from None
            raise

    def get(self, name: str) -> bytes:
        path = self._path(name)
        return self._retrying("get", path, lambda: self.fs.cat_file(path))

    def list(self, prefix: str) -> list[str]:
        """Names under ``prefix`` (relative to the root), sorted; empty if there are none.

        Never empty because listing failed: errors are retried, then raised. Temporary
        files and dotfiles (``.DS_Store``, hidden folders) are not objects: left out."""
        path = self._path(prefix).rstrip("/")

        def listing() -> list[str]:
            start = len(self.root) + 1
            # S3 has no directories, but s3fs reports a prefix as one, and SeaweedFS
            # keeps a prefix listable after its last object is deleted: objects only.
            return sorted(
                name[start:]
                for name, info in self._find(path)
                if info.get("type") != "directory" and _is_object(name[start:])
            )

        return self._retrying("list", path, listing)

    def _find(self, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every entry below ``path``; nothing if it does not exist."""
        if not self._walked:
            # The backend lists a prefix itself (s3fs: one paginated request) and raises
            # its errors; a missing prefix is an empty listing there.
            try:
                yield from self.fs.find(path, detail=True).items()
            except FileNotFoundError:
                return
            return
        yield from _walk(self.fs, path)

    def size(self, name: str) -> int:
        path = self._path(name)
        return int(self._retrying("stat", path, lambda: self.fs.size(path)))

    def delete(self, names: builtins.list[str]) -> None:
        """Delete these objects; names that are already gone are ignored."""
        if not names:
            return
        paths = [self._path(name) for name in names]

        def remove() -> None:
            for path in paths:
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    pass

        self._retrying("delete", paths[0], remove)

    def delete_prefix(self, prefix: str) -> None:
        """Delete everything under ``prefix``, temporary files included."""
        if not prefix.strip("/"):
            # On s3fs a recursive delete of the root would remove the bucket itself.
            raise ValueError("delete_prefix needs a non-empty prefix")
        path = self._path(prefix).rstrip("/")

        def remove() -> None:
            try:
                self.fs.rm(path, recursive=True)
            except FileNotFoundError:
                pass

        self._retrying("delete", path, remove)

    def _retrying(self, operation: str, path: str, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self._retry_s
        backoff = Backoff(*defaults.STORAGE_BACKOFF_S)
        while True:
            try:
                return call()
            except ObjectExists:
                raise
            except Exception as error:
                if _permanent(error) or time.monotonic() + backoff.peek() > deadline:
                    if isinstance(error, FileNotFoundError):
                        raise
                    raise StorageUnavailable(operation, path, f"{type(error).__name__}: {error}") from None
                time.sleep(backoff.next())


def _walk(fs: AbstractFileSystem, top: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Files below ``top``, folder by folder; listing errors are raised, not omitted
    (fsspec's walk omits them by default, and find uses that default)."""
    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            entries = fs.ls(folder, detail=True)
        except FileNotFoundError:
            # The prefix does not exist, or a folder below it was removed while we
            # listed: either way it holds no object now.
            continue
        for entry in entries:
            if entry.get("type") == "directory":
                if entry["name"].rstrip("/") != folder.rstrip("/"):
                    pending.append(entry["name"])
            else:
                yield entry["name"], entry


def _is_object(name: str) -> bool:
    """Not a temporary file of a create in progress, nor anything hidden (dotfiles
    and dot-folders are left by tools, never written by rayqueue)."""
    parts = name.split("/")
    return _TEMP_MARK not in parts[-1] and not any(part.startswith(".") for part in parts)


def _create_local(path: str, data: bytes) -> None:
    """Exclusive, atomic, durable create on a local disk.

    Write a temporary file and fsync it, then hard-link it into place: link()
    fails if the name exists, and the name appears only with the full content.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temp = f"{path}{_TEMP_MARK}{uuid.uuid4().hex}"
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temp, path)
    finally:
        os.unlink(temp)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
