"""The producer, consumer and demo jobs, submitted with ``ray job submit`` to a ``ray start --head`` cluster.

Token auth: ``RAY_AUTH_MODE=disabled`` is set in the environment of ``ray start``
(so the cluster, and the jobs it runs, have it) and of ``ray job submit``: one
decision for all three, as ../shared/ENVIRONMENT.md asks. The cluster is the
test's own (see ``support.ray_head``) and is stopped without ``ray stop``.
The jobs run the venv's python on this checkout's scripts: rayqueue is
installed in the venv, so no ``--working-dir`` is uploaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ray_head import RAY, RayHead, ray_head

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    with ray_head(tmp_path_factory.mktemp("head") / "ray-start.log") as started:
        yield started


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    return "file://" + str(tmp_path_factory.mktemp("storage"))


def submit(head: RayHead, storage: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``ray job submit`` and wait for the job; its exit code is the job's outcome."""
    entrypoint = [sys.executable, str(ROOT / "jobs" / script), "--storage", storage, *args]
    submission_id = f"{Path(script).stem}-{uuid.uuid4().hex[:6]}"
    command = [RAY, "job", "submit", "--address", head.dashboard, "--submission-id", submission_id, "--", *entrypoint]
    return subprocess.run(command, check=False, env=head.env, capture_output=True, text=True, timeout=240)


def summary_of(result: subprocess.CompletedProcess[str]) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout + result.stderr
    return json.loads(lines[-1])


def test_producer_then_consumer_move_every_message(head: RayHead, storage: str):
    queue = f"pipeline-{uuid.uuid4().hex[:6]}"
    produced = submit(head, storage, "producer.py", "--queue", queue, "--messages", "3000", "--size", "128", "--json")
    assert produced.returncode == 0, produced.stdout + produced.stderr
    assert summary_of(produced)["messages_sent"] == 3000
    assert "succeeded" in produced.stdout

    consumed = submit(
        head, storage, "consumer.py", "--queue", queue, "--workers", "2", "--idle-s", "1", "--json", "--delete-queue"
    )
    assert consumed.returncode == 0, consumed.stdout + consumed.stderr
    summary = summary_of(consumed)
    assert summary["messages_processed"] == summary["distinct_rows"] == 3000
    assert summary["failed"] == summary["left_in_queue"] == 0


def test_consumer_of_a_missing_queue_fails_the_job_and_says_why(head: RayHead, storage: str):
    result = submit(head, storage, "consumer.py", "--queue", f"missing-{uuid.uuid4().hex[:6]}")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "does not exist" in output and "failed" in output.lower()


@pytest.mark.slow
def test_demo_job_under_ray_job_submit(head: RayHead, storage: str):
    result = submit(head, storage, "demo.py", "--messages", "20000", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = summary_of(result)
    assert summary["missing"] == 0 and summary["messages_processed"] == 20000
