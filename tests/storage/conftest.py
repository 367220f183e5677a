"""One storage contract, three backends: ``memory://``, ``file://`` and a real ``s3://``.

The S3 server is the session's SeaweedFS (see tests/conftest.py). Every test gets its
own empty root: a fresh memory root, its own tmp_path, or a fresh prefix in the
session bucket.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from support.seaweed import SeaweedServer

from rayqueue.storage import ObjectStore

#: Retry budget of every store under test: long enough for a slow first PUT, short enough to fail fast.
RETRY_S = 3.0


@pytest.fixture(params=["memory", "file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """An empty ObjectStore on each backend."""
    unique = f"contract-{uuid.uuid4().hex}"
    if request.param == "memory":
        yield ObjectStore(f"memory://{unique}", retry_s=RETRY_S)
        # memory:// is one filesystem per process: leave nothing for the next test.
        try:
            fsspec.filesystem("memory").rm(f"/{unique}", recursive=True)
        except FileNotFoundError:
            pass  # the test deleted everything itself
    elif request.param == "file":
        yield ObjectStore(f"file://{tmp_path}/storage", retry_s=RETRY_S)
    else:
        # Asked for here, not as an argument, so memory and file runs never start the server.
        server: SeaweedServer = request.getfixturevalue("seaweed")
        yield ObjectStore(server.url(unique), server.storage_options, retry_s=RETRY_S)
