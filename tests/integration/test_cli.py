"""The ``rayqueue`` command, end to end, run as a user runs it: one process per command.

Most tests point the command at one ``ray start --head`` cluster of this module
(``--address``), each test in a namespace and storage of its own, so a command
costs a connect rather than a Ray start. One test uses ``RAY_ADDRESS=local``,
where every command starts its own Ray and finds its queues again on storage.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.ray_head import RayHead, cluster_env, ray_head

pytestmark = pytest.mark.integration

Run = Callable[..., subprocess.CompletedProcess[str]]
RAYQUEUE = [sys.executable, "-m", "rayqueue.cli"]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    with ray_head(tmp_path_factory.mktemp("head") / "ray-start.log", dashboard=False) as started:
        yield started


@pytest.fixture
def rayqueue(head: RayHead, tmp_path: Path) -> Run:
    """Run ``rayqueue ARGS`` against the module's cluster, in this test's namespace and storage."""
    options = [
        "--address",
        head.address,
        "--namespace",
        f"cli-{uuid.uuid4().hex[:8]}",
        "--storage",
        f"file://{tmp_path}",
    ]

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [*RAYQUEUE, *args[:1], *options, *args[1:]]
        return subprocess.run(
            command, check=False, input=stdin, env=head.env, capture_output=True, text=True, timeout=120
        )

    return run


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(ok(result).stdout)


def test_a_queue_from_create_to_delete(rayqueue: Run):
    created = ok(rayqueue("create", "orders", "--max-messages", "100", "--partitions", "2"))
    assert "created queue 'orders'" in created.stdout
    assert "orders" in ok(rayqueue("list")).stdout.splitlines()

    sent = as_json(rayqueue("send", "orders", "--json", stdin="first\nsecond\n\nthird\r\n"))
    assert sent["sent"] == 3 and len(set(sent["ids"])) == 3  # the empty line is skipped

    described = as_json(rayqueue("describe", "orders", "--json"))
    assert described["config"]["max_messages"] == 100 and described["config"]["partitions"] == 2
    assert described["stats"]["visible"] == 3 and described["stats"]["in_flight"] == 0

    received = as_json(rayqueue("receive", "orders", "--max", "10", "--wait", "1", "--delete", "--json"))
    assert sorted(m["body"] for m in received["messages"]) == ["first", "second", "third"]
    assert {m["id"] for m in received["messages"]} == set(sent["ids"])
    assert as_json(rayqueue("describe", "orders", "--json"))["stats"]["stored"] == 0

    ok(rayqueue("send", "orders", "a", "b"))
    purged = as_json(rayqueue("purge", "orders", "--json"))
    assert purged["deleted"] == 2 and purged["in_flight"] == 0

    assert "deleted queue 'orders'" in ok(rayqueue("delete", "orders")).stdout
    assert as_json(rayqueue("list", "--json")) == {"queues": []}


def test_human_output_of_describe_and_receive(rayqueue: Run):
    ok(rayqueue("create", "people", "--max-messages", "5000"))
    ok(rayqueue("send", "people", "hello world", "tab\there"))
    described = ok(rayqueue("describe", "people")).stdout
    assert re.search(r"^  max_messages +5,000$", described, re.M)
    assert re.search(r"^  partition_memory_bytes +268,435,456$", described, re.M)  # not glued to its value
    assert re.search(r"^  visible +2$", described, re.M)
    received = ok(rayqueue("receive", "people", "--max", "5")).stdout
    assert "hello world" in received and "tab\\there" in received  # one line per message
    assert "receipt" in received and "2 messages" in received  # not deleted: receipts are shown
    assert as_json(rayqueue("describe", "people", "--json"))["stats"]["in_flight"] == 2


def test_an_unknown_queue_exits_1_and_names_it(rayqueue: Run):
    result = rayqueue("describe", "no-such-queue")
    assert result.returncode == 1
    assert "queue 'no-such-queue' does not exist" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("frobnicate",),  # no such command
        ("receive",),  # missing the queue name
        ("receive", "orders", "--max", "many"),  # not a number
        ("create", "bad name!"),  # an invalid name: rayqueue's InvalidArgument
    ],
)
def test_bad_usage_exits_2_with_a_message(rayqueue: Run, args: tuple[str, ...]):
    result = rayqueue(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error:" in result.stderr


@pytest.mark.slow  # three Ray starts: 25-35 s here; test_bench_runs_... covers a CLI-started Ray in CI
def test_each_command_may_start_its_own_ray_and_finds_queues_on_storage(tmp_path: Path):
    """With RAY_ADDRESS=local every command is a fresh Ray: state lives on storage only."""
    env = {**cluster_env(), "RAY_ADDRESS": "local", "RAYQUEUE_STORAGE": f"file://{tmp_path}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RAYQUEUE, *args], check=False, env=env, capture_output=True, text=True, timeout=120)

    ok(run("create", "kept", "--max-messages", "10"))
    ok(run("send", "kept", "survives"))
    received = json.loads(ok(run("receive", "kept", "--delete", "--json")).stdout)
    assert [m["body"] for m in received["messages"]] == ["survives"]


def test_bench_fails_clearly_without_its_script(tmp_path: Path):
    command = [*RAYQUEUE, "bench", "--script", str(tmp_path / "missing.py")]
    result = subprocess.run(command, check=False, env=cluster_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no benchmark script found" in result.stderr and "missing.py" in result.stderr


def test_the_installed_command_runs(head: RayHead):
    script = Path(sys.executable).with_name("rayqueue")
    if not script.exists():
        pytest.skip("rayqueue is not installed as a command (pip install -e .)")
    result = subprocess.run(
        [str(script), "--help"], check=False, env=os.environ, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "receive" in result.stdout


def test_top_shows_each_queue_with_rates_and_prints_once_with_json(rayqueue: Run):
    ok(rayqueue("create", "watched", "--max-messages", "100", "--partitions", "2"))
    ok(rayqueue("send", "watched", "a", "b", "c"))
    snapshot = as_json(rayqueue("top", "--json", "--interval", "0.2"))
    (row,) = snapshot["queues"]
    assert row["queue"] == "watched" and row["partitions"] == 2 and row["visible"] == 3
    assert row["send_per_s"] is not None and row["delete_per_s"] is not None
    frames = ok(rayqueue("top", "--iterations", "2", "--interval", "0.2")).stdout
    assert frames.count("rayqueue top") == 2 and "watched" in frames and "sent/s" in frames


def test_a_stale_ray_address_file_exits_1_saying_what_to_do(tmp_path: Path):
    """What a crashed driver leaves: Ray's current-cluster file naming a dead cluster."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    env = {**cluster_env(), "RAY_TMPDIR": str(tmp_path)}
    result = subprocess.run([*RAYQUEUE, "list"], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "ray stop" in result.stderr and "RAY_ADDRESS=local" in result.stderr
    as_json_error = subprocess.run(
        [*RAYQUEUE, "list", "--json"], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert as_json_error.returncode == 1
    assert "ray_current_cluster" in json.loads(as_json_error.stdout)["error"]["message"]


def test_an_address_nobody_answers_at_exits_1_at_once():
    command = [*RAYQUEUE, "--address", "127.0.0.1:1", "list"]
    result = subprocess.run(command, check=False, env=cluster_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot reach Ray" in result.stderr and "127.0.0.1:1" in result.stderr


def test_bench_runs_jobs_bench_py_with_its_own_options(tmp_path: Path):
    env = {**cluster_env(), "RAY_ADDRESS": "local"}
    out = tmp_path / "bench.json"
    chart = tmp_path / "bench.png"
    command = [*RAYQUEUE, "bench", "--quick", "--json", str(out), "--chart", str(chart)]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ratio" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {row["scenario"] for row in rows} >= {"batched x1000", "one at a time"}
