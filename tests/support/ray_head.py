"""A ``ray start --head`` cluster of a test's own, that never touches anyone else's Ray.

- Every port ``ray start`` would take from a fixed default is chosen free here.
- ``--temp-dir`` is unique, so the cluster's address file is not the machine's
  default one: a plain ``ray.init()`` elsewhere never joins this cluster.
- ``RAY_AUTH_MODE=disabled`` is in the environment of ``ray start`` (and so of
  the cluster's workers and jobs); clients must use :attr:`RayHead.env` too.
- It runs with ``--block`` in its own process group and is stopped by
  signalling that group. ``ray stop`` would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.ports import free_ports

#: The ``ray`` command of the interpreter running the tests.
RAY = str(Path(sys.executable).with_name("ray"))

#: Options of ``ray start`` whose defaults are fixed ports shared by every Ray on the machine.
PORT_OPTIONS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


@dataclass(frozen=True)
class RayHead:
    #: GCS address, for ``ray.init(address=...)`` and ``rayqueue --address``.
    address: str
    #: Dashboard URL, for ``ray job submit --address``.
    dashboard: str
    #: Environment for every process that talks to this cluster.
    env: dict[str, str]


def cluster_env() -> dict[str, str]:
    """This process's environment without a Ray address, with one decision on auth."""
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAYQUEUE_STORAGE")}
    return {**env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@contextmanager
def ray_head(log_path: Path, num_cpus: int = 2, dashboard: bool = True) -> Iterator[RayHead]:
    """Start a head node; stop it, and only it, on exit."""
    temp_dir = tempfile.mkdtemp(prefix="rqhead-", dir="/tmp")  # short: Ray puts sockets under it
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS))))
    env = cluster_env()
    command = [
        RAY, "start", "--head", "--block", f"--num-cpus={num_cpus}", f"--include-dashboard={str(dashboard).lower()}",
        "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        *(f"{option}={port}" for option, port in ports.items()),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(ports["--dashboard-port" if dashboard else "--port"], process, log_path)
            yield RayHead(
                address=f"127.0.0.1:{ports['--port']}",
                dashboard=f"http://127.0.0.1:{ports['--dashboard-port']}",
                env=env,
            )
        finally:
            stop(process, temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_port(port: int, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        with closing(socket.socket()) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"ray start did not open port {port} within {timeout_s} s")


def stop(process: subprocess.Popen[bytes], temp_dir: str, grace_s: float = 2.0) -> None:
    """SIGTERM the head's process group and wait ``grace_s``, then SIGKILL what is left.

    A head takes 10 s or more to wind down on SIGTERM and no test needs it to:
    what matters is on storage. "What is left" is the group and anything whose
    command line names our temp dir (Ray workers).
    """
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (process.poll() is None or pids_mentioning(temp_dir)):
        time.sleep(0.3)
    for pid in pids_mentioning(temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(5.0)


def pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
