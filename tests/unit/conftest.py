"""Shared fixtures for the unit tests: a fake clock, configs, and throwaway storage.

Nothing here starts Ray. ``memory://`` is one filesystem per process, so every
test gets its own root under it and removes it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayqueue.config import QueueConfig  # noqa: E402


class FakeClock:
    """A clock that moves only when a test says so; counts how often it is read."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_config() -> Callable[..., QueueConfig]:
    """Build a valid QueueConfig; keyword arguments override the small defaults."""

    def build(**overrides: Any) -> QueueConfig:
        settings: dict[str, Any] = {"name": "orders", "max_messages": 1000, "max_message_bytes": 1024}
        settings.update(overrides)
        return QueueConfig.build(**settings)

    return build


@pytest.fixture
def memory_url() -> Iterator[str]:
    root = f"rayqueue-unit-{uuid.uuid4().hex}"
    yield f"memory://{root}"
    try:
        fsspec.filesystem("memory").rm(f"/{root}", recursive=True)
    except FileNotFoundError:
        pass


@pytest.fixture
def file_url(tmp_path: Any) -> str:
    return f"file://{tmp_path / 'storage'}"


@pytest.fixture(params=["memory", "file"])
def storage_url(request: pytest.FixtureRequest, memory_url: str, file_url: str) -> str:
    """Every storage contract test runs on both in-package backends."""
    return memory_url if request.param == "memory" else file_url
