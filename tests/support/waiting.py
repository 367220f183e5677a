"""Waiting for a condition in tests, bounded."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import ray


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> bool:
    """True as soon as ``predicate()`` holds; False if it still does not after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def kill_and_wait(*actors: Any, timeout_s: float = 10.0, no_restart: bool = True) -> None:
    """``ray.kill`` these actors together and return once their processes have exited
    (Ray may start new ones).

    The kill is asynchronous: for a few tens of milliseconds a process still serves
    calls that do not go through Ray (the direct channel). A test about what happens
    *after* a death must not race it.
    """
    pids = [ray.get(actor.__ray_call__.remote(lambda self: os.getpid())) for actor in actors]
    for actor in actors:
        ray.kill(actor, no_restart=no_restart)
    for pid in pids:
        if not wait_for(lambda pid=pid: not _running(pid), timeout_s, interval_s=0.01):
            raise AssertionError(f"process {pid} still runs {timeout_s} s after ray.kill")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
