"""Settings and services every part of the test suite may use."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support.seaweed import SeaweedServer

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A real S3 server (SeaweedFS from PyPI) for the session, started on first use."""
    with SeaweedServer(tmp_path_factory.mktemp("seaweed")) as server:
        yield server
