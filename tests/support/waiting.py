"""Waiting for a condition in tests, bounded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> bool:
    """True as soon as ``predicate()`` holds; False if it still does not after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def kill_and_wait(actor: Any, timeout_s: float = 10.0) -> None:
    """``ray.kill`` an actor (no restart) and return once Ray says it is dead.

    The kill is asynchronous: for a few tens of milliseconds the process still
    serves calls that do not go through Ray (the direct channel). A test about
    what happens *after* a death must not race it.
    """
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=timeout_s)
        except RayActorError:
            return
        time.sleep(0.01)
    raise AssertionError(f"{actor} still answers {timeout_s} s after ray.kill")
