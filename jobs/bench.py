"""Benchmark: rayqueue against ray.util.queue, side by side in one run.

    python jobs/bench.py                                  # 100 B, 1 KiB and 64 KiB; 3 runs each
    python jobs/bench.py --sizes 1024 --runs 5 --json bench.json --chart bench.png
    python jobs/bench.py --quick                          # a short run, for tests
    ray job submit -- python jobs/bench.py

Scenarios, each figure the median of ``--runs`` runs after a warm-up run:

1. batched: one producer sends ``--rounds`` batches of ``--batch`` while one
   consumer receives up to a batch at a time and deletes those (two threads, each
   with its own handle), through the list API (``send_batch(list)``, ``receive``,
   ``delete_batch(list)``) and through the Arrow bulk path (``send_batch(pa.array)``,
   ``receive_batch``, ``delete_batch(table["receipt"])``); ray.util.queue:
   ``put_nowait_batch`` / ``get_nowait_batch``.
2. one at a time: ``send``, then ``receive`` and ``delete``, one message per call
   (ray.util.queue: ``put`` then ``get``); and a producer thread sending one at a time
   while a consumer thread uses ``Queue.consumer`` (prefetch 10, deletes in tens),
   against a ``put`` thread and a ``get`` thread.
3. 8 producers: 8 Ray tasks each ``send`` one message per call while 8 consumer
   threads receive and delete one at a time: messages/s sent (durably, for
   rayqueue) and moved (received and deleted).
4. latency: one message at a time from ``send`` until a long-polling consumer
   (``receive(1, wait_s=...)``) has it, p50 and p99 in milliseconds.

rayqueue runs with ``durability="storage"`` and with ``durability="replicas"``
(one replica); by default on ``file://`` storage in a temporary directory that
the job deletes at the end. On a one-node cluster the replica shares its leader's
node, so replicas mode acknowledges a send once it is stored too (a replica there
is no second copy): its figures then show what the replica costs, not what it
saves. ray.util.queue keeps items in one actor's memory with no acknowledgement;
its actor is started before any clock. Each ratio is
rayqueue / ray.util.queue measured in the same run: above 1 rayqueue moves more
messages, and for latencies below 1 it is faster. Figures on a shared machine vary
from run to run; the ratios are the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import ray
from ray import cloudpickle
from ray.util.queue import Empty, Queue as RayUtilQueue

import rayqueue
from rayqueue import defaults

#: Body sizes measured when --sizes is not given.
SIZES = (100, 1024, 64 * 1024)
#: The issue's targets are stated for this size.
TARGET_SIZE = 1024
#: Durabilities measured, with the replicas per partition each queue gets.
DURABILITIES = {"storage": 0, "replicas": 1}
#: Producer tasks and consumer threads of the "many producers" scenario.
PRODUCERS = CONSUMERS = 8
#: The buffered consumer's settings: messages per receive call, deletes per call.
PREFETCH = DELETE_BATCH = 10
#: Long poll of every consumer (rayqueue's wait_s, ray.util.queue's get timeout).
WAIT_S = 0.5
#: A ray.util.queue batch consumer polls; it waits this long after finding too few items.
EMPTY_POLL_S = 0.001
#: A consumer that sees no message for this long gives up: something is lost or stuck.
STALL_S = 60.0
#: Settings of a full run and of --quick (which also measures 1 KiB only).
FULL = {"runs": 3, "rounds": 20, "single": 200}
QUICK = {"runs": 1, "rounds": 2, "single": 20}

RATE, MILLISECONDS = "msg/s", "ms"

#: Receives one message (waiting up to the given seconds), deletes it and returns the
#: moment (time.time()) it was received, or None if none came.
TakeOne = Callable[[float], float | None]

if __name__ != "__main__":
    # Loaded as a module (``rayqueue bench`` does): Ray workers cannot import it by
    # name, so its tasks and classes travel by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------------------- the queues


class Side(Protocol):
    """One queue as the scenarios drive it. Not shared between threads: use a clone."""

    def clone(self) -> Side: ...

    def batch_payload(self, bodies: list[bytes]) -> Any:
        """``bodies`` as ``send_batch`` takes them on this path (made before the clock)."""

    def send_batch(self, payload: Any) -> None: ...

    def take_batch(self, most: int) -> int:
        """Receive up to ``most`` messages and delete them; return how many."""

    def send(self, body: bytes) -> None: ...

    def taker(self) -> AbstractContextManager[TakeOne]:
        """One-at-a-time taking, for the span of a ``with`` block."""


class RayQueueList:
    """rayqueue through its list API: ``send_batch(list)``, ``receive``, ``delete_batch(list)``."""

    def __init__(self, queue: rayqueue.Queue) -> None:
        self.queue = queue

    def clone(self) -> RayQueueList:
        return type(self)(copy.copy(self.queue))  # a fresh handle, as another process would have

    def batch_payload(self, bodies: list[bytes]) -> Any:
        return bodies

    def send_batch(self, payload: Any) -> None:
        self.queue.send_batch(payload)

    def take_batch(self, most: int) -> int:
        messages = self.queue.receive(most, wait_s=WAIT_S)
        if messages:
            self.queue.delete_batch([message.receipt for message in messages])
        return len(messages)

    def send(self, body: bytes) -> None:
        self.queue.send(body)

    @contextmanager
    def taker(self) -> Iterator[TakeOne]:
        yield self._take_one

    def _take_one(self, wait_s: float) -> float | None:
        messages = self.queue.receive(1, wait_s=wait_s)
        return received_then_deleted(messages[0] if messages else None, self.queue)


class RayQueueArrow(RayQueueList):
    """rayqueue through the Arrow bulk path: ``send_batch(pa.array)``, ``receive_batch``,
    ``delete_batch(table["receipt"])``."""

    def batch_payload(self, bodies: list[bytes]) -> Any:
        return pa.array(bodies, pa.binary())

    def take_batch(self, most: int) -> int:
        table = self.queue.receive_batch(most, wait_s=WAIT_S)
        if table.num_rows:
            self.queue.delete_batch(table["receipt"])
        return table.num_rows


class RayQueueBuffered(RayQueueList):
    """rayqueue taken one at a time through ``Queue.consumer`` (prefetch, batched deletes).
    Leaving the ``with`` block flushes the last deletes: they are inside the clock."""

    @contextmanager
    def taker(self) -> Iterator[TakeOne]:
        with self.queue.consumer(prefetch=PREFETCH, delete_batch=DELETE_BATCH) as consumer:
            yield lambda wait_s: received_then_deleted(consumer.receive(wait_s), consumer)


class RayQueueFacade(RayQueueList):
    """rayqueue's awaitable calls behind a blocking facade: each call runs on one event-loop
    thread per process and the caller waits for it. This is how a single async implementation
    with a thin blocking facade would behave; measured side by side with the blocking driver
    (the "list" path) before choosing between the two designs."""

    def send(self, body: bytes) -> None:
        on_loop_thread(self.queue.send_async(body))

    def _take_one(self, wait_s: float) -> float | None:
        messages = on_loop_thread(self.queue.receive_async(1, wait_s=wait_s))
        if not messages:
            return None
        received = time.time()
        on_loop_thread(self.queue.delete_async(messages[0].receipt))
        return received


T = TypeVar("T")
_loop_thread: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def on_loop_thread(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on this process's event-loop thread (started on first use) and wait for it."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is None:
            _loop_thread = asyncio.new_event_loop()
            threading.Thread(target=_loop_thread.run_forever, name="rayqueue-loop", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(work, _loop_thread).result()


def received_then_deleted(message: rayqueue.Message | None, deleter: Any) -> float | None:
    """When ``message`` was received (None if none came), once ``deleter`` has deleted it."""
    if message is None:
        return None
    received = time.time()
    deleter.delete(message.receipt)
    return received


#: rayqueue's API paths, by name.
PATHS: dict[str, type[RayQueueList]] = {
    "list": RayQueueList,
    "arrow": RayQueueArrow,
    "buffered": RayQueueBuffered,
    "facade": RayQueueFacade,
}


class RayUtilSide:
    """ray.util.queue: ``put_nowait_batch`` / ``get_nowait_batch``, ``put`` / ``get``."""

    def __init__(self, queue: RayUtilQueue) -> None:
        self.queue = queue

    def clone(self) -> RayUtilSide:
        return RayUtilSide(copy.copy(self.queue))

    def batch_payload(self, bodies: list[bytes]) -> Any:
        return bodies

    def send_batch(self, payload: Any) -> None:
        self.queue.put_nowait_batch(payload)

    def take_batch(self, most: int) -> int:
        # get_nowait_batch takes exactly `most` or raises Empty; producers put whole batches.
        try:
            return len(self.queue.get_nowait_batch(most))
        except Empty:
            time.sleep(EMPTY_POLL_S)
            return 0

    def send(self, body: bytes) -> None:
        self.queue.put(body)

    @contextmanager
    def taker(self) -> Iterator[TakeOne]:
        yield self._take_one

    def _take_one(self, wait_s: float) -> float | None:
        try:
            self.queue.get(timeout=wait_s)
        except Empty:
            return None
        return time.time()


@ray.remote(num_cpus=0)
class Gate:
    """Holds tasks until ``parties`` of them wait under one key, then lets them all go,
    so that producers start together whatever their worker processes took to start."""

    def __init__(self) -> None:
        self._arrived: dict[str, int] = {}
        self._open: dict[str, asyncio.Event] = {}

    async def wait(self, key: str, parties: int) -> None:
        opened = self._open.setdefault(key, asyncio.Event())
        self._arrived[key] = self._arrived.get(key, 0) + 1
        if self._arrived[key] >= parties:
            opened.set()
        await opened.wait()


# ------------------------------------------------------------------------- the scenarios


@dataclass(frozen=True)
class Workload:
    """What one scenario run moves, at one size."""

    bodies: list[bytes]  # one batch of distinct bodies; the one-at-a-time scenarios send the first
    rounds: int  # batches per batched run
    single: int  # messages per one-at-a-time run (per producer with many producers)
    gate: Any


class Tally:
    """Messages taken so far by one or more consumers, towards a total. Thread-safe."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.finished_at = 0.0  # time.time() when the last one was taken
        self._taken = 0
        self._lock = threading.Lock()

    def remaining(self) -> int:
        with self._lock:
            return self.total - self._taken

    def add(self, count: int) -> None:
        with self._lock:
            self._taken += count
            if self._taken >= self.total and not self.finished_at:
                self.finished_at = time.time()


def drain(take: Callable[[int], int], tally: Tally, most: int = 1) -> None:
    """Call ``take(up to most)`` until the tally is complete; raise if nothing comes for STALL_S."""
    last = time.monotonic()
    while (remaining := tally.remaining()) > 0:
        taken = take(min(most, remaining))
        if taken:
            tally.add(taken)
            last = time.monotonic()
        elif time.monotonic() - last > STALL_S:
            raise RuntimeError(f"no message came for {STALL_S:.0f} s; {remaining} of {tally.total} still missing")


def counted(take: TakeOne, arrivals: queue.Queue[float] | None = None) -> Callable[[int], int]:
    """``take`` as ``drain`` calls it; each moment a message arrived goes to ``arrivals``."""

    def take_counted(_most: int) -> int:
        received = take(WAIT_S)
        if received is None:
            return 0
        if arrivals is not None:
            arrivals.put(received)
        return 1

    return take_counted


def run_together(*jobs: Callable[[], None]) -> float:
    """Run each job in a thread, all at once; return the seconds until all have returned.
    Raises the first error at once (the other threads are daemons and are left behind)."""
    outcomes: queue.Queue[Exception | None] = queue.Queue()

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except Exception as error:  # noqa: BLE001 - handed to the waiting thread, which raises it
            outcomes.put(error)
        else:
            outcomes.put(None)

    started = time.perf_counter()
    for job in jobs:
        threading.Thread(target=run, args=(job,), daemon=True).start()
    for _ in jobs:
        error = outcomes.get()
        if error is not None:
            raise error
    return time.perf_counter() - started


def batched_cycle(side: Side, work: Workload) -> dict[str, float]:
    """One producer sends batches while one consumer takes up to a batch per call."""
    producer, consumer = side.clone(), side.clone()
    payload = producer.batch_payload(work.bodies)
    batch = len(work.bodies)
    total = batch * work.rounds

    def produce() -> None:
        for _ in range(work.rounds):
            producer.send_batch(payload)

    seconds = run_together(produce, partial(drain, consumer.take_batch, Tally(total), batch))
    return {"": total / seconds}


def one_at_a_time(side: Side, work: Workload) -> dict[str, float]:
    """One thread: send a message, then take it; again and again."""
    body = work.bodies[0]
    with side.taker() as take:
        started = time.perf_counter()
        for _ in range(work.single):
            side.send(body)
            drain(counted(take), Tally(1))
        return {"": work.single / (time.perf_counter() - started)}


def producer_and_consumer(side: Side, work: Workload) -> dict[str, float]:
    """A producer thread sends one message per call while a consumer thread takes them."""
    producer, consumer = side.clone(), side.clone()

    def produce() -> None:
        for _ in range(work.single):
            producer.send(work.bodies[0])

    seconds = run_together(produce, partial(take_all, consumer, Tally(work.single)))
    return {"": work.single / seconds}


def take_all(side: Side, tally: Tally, arrivals: queue.Queue[float] | None = None) -> None:
    """Take messages one at a time until the tally is complete (see ``counted``)."""
    with side.taker() as take:
        drain(counted(take, arrivals), tally)


@ray.remote(num_cpus=0)
def send_one_by_one(side: Side, body: bytes, count: int, gate: Any, run: str) -> tuple[float, float]:
    """Wait for the other producers at the gate, then send; return when sending began and ended."""
    ray.get(gate.wait.remote(run, PRODUCERS))
    started = time.time()
    for _ in range(count):
        side.send(body)
    return started, time.time()


def many_producers(side: Side, work: Workload) -> dict[str, float]:
    """PRODUCERS tasks send one message per call while CONSUMERS threads take them."""
    total = PRODUCERS * work.single
    tally = Tally(total)
    consumers = [side.clone() for _ in range(CONSUMERS)]
    run = uuid.uuid4().hex
    producers = [send_one_by_one.remote(side, work.bodies[0], work.single, work.gate, run) for _ in range(PRODUCERS)]
    spans: list[tuple[float, float]] = []
    # Waiting for the producers alongside the consumers raises a producer's error at once.
    run_together(lambda: spans.extend(ray.get(producers)), *(partial(take_all, c, tally) for c in consumers))
    started = min(start for start, _ in spans)
    sent = max(end for _, end in spans) - started
    return {"sent": total / sent, "moved": total / (tally.finished_at - started)}


def latency(side: Side, work: Workload) -> dict[str, float]:
    """Send one message, wait until the long-polling consumer has it (and has deleted it), repeat."""
    producer, consumer = side.clone(), side.clone()
    arrivals: queue.Queue[float] = queue.Queue()
    samples: list[float] = []

    def produce() -> None:
        for _ in range(work.single):
            sent = time.time()
            producer.send(work.bodies[0])
            samples.append(arrivals.get(timeout=STALL_S) - sent)

    run_together(produce, partial(take_all, consumer, Tally(work.single), arrivals))
    p50, p99 = np.percentile(samples, [50, 99]) * 1000
    return {"p50": float(p50), "p99": float(p99)}


@dataclass(frozen=True)
class Target:
    """A figure the issue asks for at TARGET_SIZE: the ratio or rayqueue's own value,
    at least (or below) a bound."""

    figure: Literal["ratio", "rayqueue"]
    bound: float
    at_least: bool = True
    durability: str | None = None  # None: every durability

    def applies(self, size: int, durability: str) -> bool:
        return size == TARGET_SIZE and self.durability in (None, durability)

    def met(self, row: Row) -> bool:
        value = getattr(row, self.figure)
        return value >= self.bound if self.at_least else value < self.bound

    def describe(self, unit: str) -> str:
        bound = f"{self.bound:g}" if self.figure == "ratio" else f"{self.bound:,g} {unit}"
        return f"{'ratio ' if self.figure == 'ratio' else ''}{'>=' if self.at_least else '<'} {bound}"


@dataclass(frozen=True)
class Scenario:
    name: str
    unit: str
    #: rayqueue's API paths that run it, each with its label in the table.
    paths: dict[str, str]
    #: One run on one side: figures by name ("" when the scenario has one).
    run: Callable[[Side, Workload], dict[str, float]]
    #: The issue's targets, by figure name.
    targets: dict[str, Target] = field(default_factory=dict)


def scenarios(batch: int) -> list[Scenario]:
    at_most = partial(Target, "rayqueue", at_least=False)
    return [
        Scenario(
            f"batched x{batch}",
            RATE,
            paths={"list": "list", "arrow": "arrow"},
            run=batched_cycle,
            targets={"": Target("ratio", 2.0, durability="storage")},
        ),
        Scenario(
            "one at a time",
            RATE,
            paths={"list": "send, receive, delete", "facade": "the same, async behind a blocking facade"},
            run=one_at_a_time,
            targets={"": Target("ratio", 1.0)},
        ),
        Scenario(
            "one at a time",
            RATE,
            paths={"buffered": "buffered consumer"},
            run=producer_and_consumer,
            targets={"": Target("ratio", 1.0)},
        ),
        Scenario(
            f"{PRODUCERS} producers",
            RATE,
            paths={"list": ""},
            run=many_producers,
            targets={"sent": Target("rayqueue", 5000.0)},
        ),
        Scenario(
            "latency",
            MILLISECONDS,
            paths={"list": "", "facade": "async behind a blocking facade"},
            run=latency,
            targets={"p50": at_most(1.5), "p99": at_most(5.0)},
        ),
    ]


# ------------------------------------------------------------------------ measuring


@dataclass(frozen=True)
class Row:
    """One figure at one size and durability: rayqueue's runs against ray.util.queue's."""

    scenario: str
    variant: str
    durability: str
    size: int
    unit: str
    rayqueue_runs: tuple[float, ...]
    ray_util_queue_runs: tuple[float, ...]
    target: Target | None = None

    @property
    def rayqueue(self) -> float:
        return statistics.median(self.rayqueue_runs)

    @property
    def ray_util_queue(self) -> float:
        return statistics.median(self.ray_util_queue_runs)

    @property
    def ratio(self) -> float:
        return self.rayqueue / self.ray_util_queue if self.ray_util_queue else float("nan")

    def mb_s(self, value: float) -> float | None:
        return value * self.size / 1e6 if self.unit == RATE else None

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "variant": self.variant,
            "durability": self.durability,
            "size": self.size,
            "unit": self.unit,
            "rayqueue": self.rayqueue,
            "ray_util_queue": self.ray_util_queue,
            "ratio": self.ratio,
            "rayqueue_mb_s": self.mb_s(self.rayqueue),
            "ray_util_queue_mb_s": self.mb_s(self.ray_util_queue),
            "rayqueue_runs": list(self.rayqueue_runs),
            "ray_util_queue_runs": list(self.ray_util_queue_runs),
            "target": self.target.describe(self.unit) if self.target else None,
            "target_met": self.target.met(self) if self.target else None,
        }


def repeat(runs: int, once: Callable[[], dict[str, float]]) -> dict[str, tuple[float, ...]]:
    """Each figure of ``once`` over ``runs`` runs, after a warm-up run."""
    once()
    results = [once() for _ in range(runs)]
    return {name: tuple(result[name] for result in results) for name in results[0]}


def measure(
    scenario: Scenario, size: int, work: Workload, baseline: Side, sides: dict[str, dict[str, Side]], runs: int
) -> list[Row]:
    theirs = repeat(runs, partial(scenario.run, baseline, work))
    rows = []
    for durability, by_path in sides.items():
        for path, label in scenario.paths.items():
            ours = repeat(runs, partial(scenario.run, by_path[path], work))
            for name, values in ours.items():
                target = scenario.targets.get(name)
                rows.append(
                    Row(
                        scenario.name,
                        ", ".join(part for part in (label, name) if part),
                        durability,
                        size,
                        scenario.unit,
                        values,
                        theirs[name],
                        target if target and target.applies(size, durability) else None,
                    )
                )
    return rows


# ----------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]
    runs: int
    batch: int
    rounds: int
    single: int
    storage: str | None
    json: str | None
    chart: str | None

    @property
    def max_messages(self) -> int:
        """Room for everything one run sends, twice over."""
        return 2 * max(self.batch * self.rounds, PRODUCERS * self.single)


def parse_settings(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", help="body sizes in bytes (default 100 1024 65536)")
    parser.add_argument("--runs", type=int, help=f"measured runs per figure, after a warm-up (default {FULL['runs']})")
    parser.add_argument("--batch", type=int, default=1000, help="messages per batch (default 1000)")
    parser.add_argument("--rounds", type=int, help=f"batches per batched run (default {FULL['rounds']})")
    parser.add_argument(
        "--single", type=int, help=f"messages per one-at-a-time run, and per producer (default {FULL['single']})"
    )
    parser.add_argument("--quick", action="store_true", help="a short run for tests: 1 run, few messages, 1 KiB only")
    parser.add_argument("--storage", help="fsspec URL (default: a temporary directory, deleted at the end)")
    parser.add_argument("--json", help="write the settings and rows to this JSON file")
    parser.add_argument("--chart", help="draw the figures into this PNG file")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = tuple(args.sizes or ((TARGET_SIZE,) if args.quick else SIZES))
    if min(sizes) < 1 or args.batch < 1:
        parser.error("--sizes and --batch must be positive")
    if args.batch * max(sizes) > defaults.MAX_BATCH_BYTES:
        parser.error(
            f"a batch of {args.batch} x {max(sizes)} bytes exceeds rayqueue's {defaults.MAX_BATCH_BYTES} bytes"
        )
    return Settings(
        sizes=sizes,
        runs=args.runs or base["runs"],
        batch=args.batch,
        rounds=args.rounds or base["rounds"],
        single=args.single or base["single"],
        storage=args.storage,
        json=args.json,
        chart=args.chart,
    )


def join_ray() -> bool:
    """Join RAY_ADDRESS, or start a local Ray, unless connected already; True if this job did."""
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    return True


@contextmanager
def rayqueue_sides(settings: Settings, storage: str) -> Iterator[dict[str, dict[str, Side]]]:
    """For each durability a new queue, seen through each API path. The benchmark uses a
    namespace (and so a coordinator) of its own; queues and coordinator go at the end."""
    namespace = f"rayqueue-bench-{uuid.uuid4().hex[:8]}"
    client = rayqueue.connect(storage=storage, namespace=namespace)
    names: list[str] = []
    try:
        sides: dict[str, dict[str, Side]] = {}
        for durability, replicas in DURABILITIES.items():
            names.append(f"bench-{durability}-{uuid.uuid4().hex[:6]}")
            queue = client.create_queue(
                names[-1],
                max_messages=settings.max_messages,
                max_message_bytes=max(settings.sizes),
                durability=durability,
                replicas=replicas,
            )
            sides[durability] = {path: side(queue) for path, side in PATHS.items()}
        yield sides
    except BaseException:
        with suppress(Exception):  # the error that brought us here is the one to report
            remove_queues(client, names, namespace)
        raise
    remove_queues(client, names, namespace)


def remove_queues(client: rayqueue.Client, names: list[str], namespace: str) -> None:
    for name in names:
        client.delete_queue(name)
    # rayqueue has no call that stops a namespace's coordinator, which is detached: on
    # a cluster that outlives this job it would stay.
    ray.kill(ray.get_actor(defaults.COORDINATOR_NAME, namespace=namespace), no_restart=True)


@contextmanager
def baseline_side() -> Iterator[Side]:
    baseline = RayUtilQueue()
    baseline.size()  # its actor is up before any clock starts
    try:
        yield RayUtilSide(baseline)
    finally:
        baseline.shutdown(force=True)


@contextmanager
def start_gate() -> Iterator[Any]:
    gate = Gate.remote()
    ray.get(gate.wait.remote("up", 1))
    try:
        yield gate
    finally:
        ray.kill(gate)


def bodies(size: int, count: int) -> list[bytes]:
    """Distinct random bodies (nothing that compresses), the same for both queues."""
    rng = np.random.default_rng(size)
    return [rng.bytes(size) for _ in range(count)]


def run(settings: Settings, storage: str) -> list[Row]:
    started = time.monotonic()
    rows: list[Row] = []
    with rayqueue_sides(settings, storage) as sides, baseline_side() as baseline, start_gate() as gate:
        for size in settings.sizes:
            work = Workload(bodies(size, settings.batch), settings.rounds, settings.single, gate)
            for scenario in scenarios(settings.batch):
                print(
                    f"[{time.monotonic() - started:5.0f} s] {size_label(size)}: {scenario.name} "
                    f"{'/'.join(scenario.paths)}",
                    file=sys.stderr,
                    flush=True,
                )
                rows += measure(scenario, size, work, baseline, sides, settings.runs)
    return rows


# ------------------------------------------------------------------------- reporting


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def figure(value: float | None, unit: str) -> str:
    """Rates as whole numbers, milliseconds and MB/s with decimals, nothing as blank."""
    if value is None:
        return ""
    return f"{value:,.0f}" if unit == RATE else f"{value:,.2f}" if unit == MILLISECONDS else f"{value:,.1f}"


def table_order(rows: list[Row]) -> list[Row]:
    """By size, then figures in the order measured, storage and replicas side by side."""
    figures = list(dict.fromkeys((row.scenario, row.variant) for row in rows))
    durabilities = list(DURABILITIES)
    return sorted(
        rows, key=lambda row: (row.size, figures.index((row.scenario, row.variant)), durabilities.index(row.durability))
    )


def print_table(rows: list[Row], settings: Settings, storage: str) -> None:
    print(
        f"rayqueue vs ray.util.queue: median of {settings.runs} run(s) after a warm-up; batches of "
        f"{settings.batch} x {settings.rounds}; {settings.single} messages one at a time "
        f"(each of {PRODUCERS} producers); storage {storage}; Ray {ray.__version__}, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'size':>6}  {'scenario':<14} {'variant':<22} {'durability':<10} {'rayqueue':>10} {'MB/s':>7} "
        f"{'ray.util.queue':>14} {'MB/s':>7} {'unit':<5} {'ratio':>6}  target at {size_label(TARGET_SIZE)}"
    )
    print(header)
    print("-" * len(header))
    for row in table_order(rows):
        target = f"{row.target.describe(row.unit)}: {'met' if row.target.met(row) else 'MISSED'}" if row.target else ""
        print(
            f"{size_label(row.size):>6}  {row.scenario:<14} {row.variant:<22} {row.durability:<10} "
            f"{figure(row.rayqueue, row.unit):>10} {figure(row.mb_s(row.rayqueue), 'MB/s'):>7} "
            f"{figure(row.ray_util_queue, row.unit):>14} {figure(row.mb_s(row.ray_util_queue), 'MB/s'):>7} "
            f"{row.unit:<5} {row.ratio:>6.2f}  {target}"
        )
    print(
        "ratio = rayqueue / ray.util.queue (msg/s: above 1 rayqueue moves more; ms: below 1 it is faster). "
        "The buffered consumer is compared with a put thread and a get thread running together."
    )


def write_json(rows: list[Row], settings: Settings, storage: str, path: str) -> None:
    document = {
        "settings": {**asdict(settings), "storage": storage, "producers": PRODUCERS, "consumers": CONSUMERS},
        "environment": {"ray": ray.__version__, "python": platform.python_version(), "cpus": os.cpu_count()},
        "rows": [row.to_json() for row in rows],
    }
    with open(path, "w") as handle:
        json.dump(document, handle, indent=1)


def draw_chart(rows: list[Row], path: str) -> None:
    """One panel per figure: rayqueue per durability and ray.util.queue, by size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((row.scenario, row.variant) for row in rows))
    columns = 4
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False)
    for ax, (scenario, variant) in zip(axes.flat, panels):
        draw_panel(ax, [row for row in rows if (row.scenario, row.variant) == (scenario, variant)])
        ax.set_title(f"{scenario}: {variant}", fontsize=9)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_panel(ax: Any, rows: list[Row]) -> None:
    """Bars by size: rayqueue for each durability, then ray.util.queue."""
    sizes = sorted({row.size for row in rows})
    durabilities = list(dict.fromkeys(row.durability for row in rows))
    unit = rows[0].unit
    by_key = {(row.durability, row.size): row for row in rows}
    series = {
        f"rayqueue, {durability}": [
            by_key[durability, size].rayqueue if (durability, size) in by_key else np.nan for size in sizes
        ]
        for durability in durabilities
    }
    series["ray.util.queue"] = [next(row.ray_util_queue for row in rows if row.size == size) for size in sizes]
    x = np.arange(len(sizes))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        bars = ax.bar(x + i * width, values, width, label=label, color="grey" if label == "ray.util.queue" else None)
        ax.bar_label(bars, fmt="{:,.0f}" if unit == RATE else "{:.1f}", fontsize=6)
    ax.set_xticks(x + width * (len(series) - 1) / 2, [size_label(size) for size in sizes])
    ax.set_ylabel(unit)
    if unit == RATE:  # sizes differ by orders of magnitude; bars start at a power of ten
        ax.set_yscale("log")
        ax.set_ylim(bottom=10 ** np.floor(np.log10(np.nanmin([v for values in series.values() for v in values]))))


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    storage_dir = None if settings.storage else tempfile.mkdtemp(prefix="rayqueue-bench-")
    storage = settings.storage or f"file://{storage_dir}"
    started_ray = join_ray()
    try:
        rows = run(settings, storage)
    finally:
        if started_ray:
            ray.shutdown()
        if storage_dir:
            shutil.rmtree(storage_dir, ignore_errors=True)
    print_table(rows, settings, storage)
    if settings.json:
        write_json(rows, settings, storage, settings.json)
    if settings.chart:
        draw_chart(rows, settings.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
