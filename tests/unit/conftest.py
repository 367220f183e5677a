"""Shared fixtures for the unit tests: a fake clock, configs, and throwaway storage.

No unit test may start Ray: ``no_ray`` (autouse) fails one that tries.
``memory://`` is one filesystem per process, so every test gets its own root
under it and removes it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import pytest
import ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayqueue.config import QueueConfig  # noqa: E402


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a unit test that starts Ray (``ray.get`` on a handle starts it through ``ray.init`` too)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a unit test must not start Ray: test it through a seam, or move it to tests/integration")

    assert not ray.is_initialized(), "Ray was running when this unit test started"
    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert not ray.is_initialized(), "this unit test started Ray"


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
