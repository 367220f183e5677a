"""The demo and pipeline jobs as a new user first runs them: no warning to decode, no
progress lines of an empty queue, and a failure that names its cause."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_job(script: str, *args: str, storage: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    env.update(RAY_ADDRESS="local", RAYQUEUE_STORAGE=f"file://{storage}", RAY_USAGE_STATS_ENABLED="0")
    command = [sys.executable, str(ROOT / "jobs" / script), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_the_demo_prints_no_warning_and_no_empty_progress_lines(tmp_path: Path):
    result = run_job("demo.py", "--messages", "2000", "--batch", "100", storage=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Token authentication is" not in result.stderr  # the auth mode is chosen, not defaulted
    progress = [line for line in result.stdout.splitlines() if "in flight" in line]
    empty = re.compile(r"visible +0 +in flight +0 +stored +0\.0 MB")
    assert not [line for line in progress if empty.search(line)]
    assert "OK: every message sent was processed" in result.stdout


def test_a_failing_consumer_job_prints_the_cause_and_exits_1(tmp_path: Path):
    result = run_job("consumer.py", "--queue", f"missing-{uuid.uuid4().hex[:6]}", storage=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "QueueNotFound" in result.stderr
    assert "core worker has already been shutdown" not in result.stderr
