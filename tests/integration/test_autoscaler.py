"""Ray's real autoscaler, against fake nodes on this machine: a rising load makes a queue's
partitions grow, their resource requests make the autoscaler add nodes, and when the load
stops both shrink back.

The fake-node autoscaler (see ../shared/ENVIRONMENT.md) needs a `ray start --head` on the
default port 6379, and `ray stop` stops every Ray process on the machine: this module
starts its own head and stops it at the end; nothing else runs Ray meanwhile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from support.waiting import wait_for

import rayqueue

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parent / "data" / "fake_autoscaler.yaml"
RAY = str(Path(sys.executable).parent / "ray")


def ray_env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}


@pytest.fixture(scope="module")
def autoscaling_cluster() -> Iterator[None]:
    subprocess.run(
        [RAY, "start", "--head", f"--autoscaling-config={CONFIG}", "--num-cpus=1", "--include-dashboard=false"],
        env=ray_env(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        ray.init(address="127.0.0.1:6379", namespace="autoscaler", log_to_driver=False)
        yield
    finally:
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], env=ray_env(), capture_output=True, timeout=120)
        os.environ.pop("RAY_AUTH_MODE", None)


def alive_nodes() -> int:
    return len([node for node in ray.nodes() if node["Alive"]])


def test_load_grows_partitions_and_nodes_and_both_shrink_back(autoscaling_cluster):
    client = rayqueue.connect(storage=f"file://{tempfile.mkdtemp()}", namespace="autoscaler")
    queue = client.create_queue(
        "autoscaled",
        max_messages=1_000_000,
        max_message_bytes=100,
        partitions=1,
        min_partitions=1,
        max_partitions=4,
        target_send_rate=50.0,
        scaling_window_s=3.0,
        scaling_cooldown_s=3.0,
        # Worker nodes carry two of these each (the head none): 4 partitions need 2 nodes.
        partition_resources={"rayqueue_partition": 1.0},
    )
    assert alive_nodes() == 2  # the head, and one worker for the first partition
    stop_producing, stop_consuming = threading.Event(), threading.Event()
    sent: list[str] = []
    delivered: set[str] = set()

    def produce() -> None:
        while not stop_producing.is_set():
            sent.extend(queue.send_batch([b"x"] * 20))
            time.sleep(0.05)

    def consume() -> None:
        # Until told: a retiring partition goes only once consumers have drained it.
        while not stop_consuming.is_set():
            messages = queue.receive(100, wait_s=0.5)
            if messages:
                queue.delete_batch([m.receipt for m in messages])
                delivered.update(m.id for m in messages)

    producer, consumer = threading.Thread(target=produce), threading.Thread(target=consume)
    producer.start()
    consumer.start()
    try:
        grew = wait_for(lambda: len(queue.stats().partitions) >= 3 and alive_nodes() >= 3, 120)
        stop_producing.set()
        producer.join(timeout=120)
        shrank = wait_for(lambda: len(queue.stats().partitions) == 1 and alive_nodes() == 2, 180)
    finally:
        stop_producing.set()
        stop_consuming.set()
        producer.join(timeout=120)
        consumer.join(timeout=120)
    assert grew, f"partitions {len(queue.stats().partitions)}, nodes {alive_nodes()}"
    assert shrank, f"partitions {len(queue.stats().partitions)}, nodes {alive_nodes()}"
    assert set(sent) <= delivered
