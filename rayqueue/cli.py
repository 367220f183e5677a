"""The ``rayqueue`` command: manage queues and move messages from a shell.

    rayqueue create orders --max-messages 100000 --partitions 2
    rayqueue send orders "first" "second"            # bodies from arguments
    seq 1000 | rayqueue send orders                   # or one per line of standard input
    rayqueue describe orders --json                   # settings and stats, for scripts
    rayqueue receive orders --max 10 --wait 2 --delete
    rayqueue purge orders && rayqueue delete orders
    rayqueue bench --runs 1                           # runs jobs/bench.py

It attaches to the Ray cluster at ``--address`` (or ``RAY_ADDRESS``, or the one
``ray start`` left running here), or starts a local Ray for the one command;
queues live on ``--storage`` (or ``RAYQUEUE_STORAGE``), so they outlast it.
Output is for people by default and one JSON document with ``--json``.
Exit codes: 0 done, 1 a rayqueue or Ray error (the message on standard error
names it), 2 bad usage (unknown options, invalid names or values).

Each command is an action that returns a plain dict, and the dict is rendered
either as JSON or by the command's human formatter: the two never disagree.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import ray

import rayqueue
from rayqueue import InvalidArgument, RayQueueError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: Defaults of ``create`` (the Python API has none for these two).
DEFAULT_MAX_MESSAGES = 1_000_000
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
#: Messages per send_batch, receive and delete_batch call of send and purge.
BATCH = 1000
#: Bodies per send_batch call stay under rayqueue's 64 MiB per call.
MAX_BATCH_BYTES = 64 * 1024 * 1024
#: How long to try reaching a Ray address before saying it is not there.
CONNECT_TIMEOUT_S = 3.0

Result = dict[str, Any]


# ------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "bench" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "bench":
            return run_bench(parser, args, extra)
        result = ACTIONS[args.command](connect(args), args)
    except InvalidArgument as error:
        return fail(EXIT_USAGE, explain(error))
    except RayQueueError as error:
        return fail(EXIT_ERROR, explain(error))
    except ConnectionError as error:
        return fail(EXIT_ERROR, f"cannot reach Ray: {error}")
    except KeyboardInterrupt:
        return fail(130, "interrupted")
    print(json.dumps(result) if args.json else FORMATTERS[args.command](result), flush=True)
    return EXIT_OK


def fail(code: int, message: str) -> int:
    print(f"rayqueue: error: {message}", file=sys.stderr, flush=True)
    return code


def explain(error: Exception) -> str:
    return "; ".join([str(error), *getattr(error, "__notes__", ())])


def connect(args: argparse.Namespace) -> rayqueue.Client:
    """Join Ray quietly (worker logs would mix with our output), then rayqueue."""
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        check_reachable(address)
        ray.init(
            address=address,
            namespace=args.namespace,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    return rayqueue.connect(args.address, storage=args.storage, namespace=args.namespace)


def check_reachable(address: str | None) -> None:
    """Fail fast on a ``host:port`` nobody listens at: Ray itself retries it for minutes."""
    host, sep, port = (address or "").rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", "local", ray://... and None: Ray's own handling
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ConnectionError(f"nothing answers at {address} ({error.strerror or error})") from None


# ----------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayqueue",
        description=__doc__.split("\n\nEach command")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rayqueue {rayqueue.__version__}")
    add_common(parser, top=True)  # real defaults at the top level
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (helptext, arguments) in COMMANDS.items():
        common = argparse.ArgumentParser(add_help=False)
        # bench passes --json FILE on to bench.py and runs in the default namespace
        add_common(common, top=False, connection_only=name == "bench")
        sub = commands.add_parser(name, help=helptext, description=helptext, parents=[common])
        arguments(sub)
    return parser


def add_common(parser: argparse.ArgumentParser, *, top: bool, connection_only: bool = False) -> None:
    """The global options, also accepted after the command, where they default to "not given"."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--address", default=default(None), help="Ray address (default: RAY_ADDRESS or local)")
    parser.add_argument("--storage", default=default(None), help="fsspec URL (default: RAYQUEUE_STORAGE)")
    if connection_only:
        return
    parser.add_argument("--namespace", default=default("rayqueue"), help="rayqueue's Ray namespace")
    parser.add_argument("--json", action="store_true", default=default(False), help="print one JSON document")


def create_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name")
    sub.add_argument("--max-messages", type=int, default=DEFAULT_MAX_MESSAGES, help="queue size (default 1,000,000)")
    sub.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, help="default 262,144")
    sub.add_argument("--partitions", type=int, default=None, help="default 1")
    sub.add_argument("--visibility-timeout", type=float, default=None, metavar="S", help="seconds (default 30)")
    sub.add_argument("--retention", type=float, default=None, metavar="S", help="seconds (default 4 days)")
    sub.add_argument("--durability", choices=("storage", "replicas"), default=None, help="default storage")


def name_argument(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name")


def send_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name")
    sub.add_argument("bodies", nargs="*", metavar="BODY", help="message bodies; none: one per line of stdin")
    sub.add_argument("--batch", type=int, default=BATCH, help="messages per call (default 1000)")


def receive_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name")
    sub.add_argument("--max", type=int, default=1, help="most messages to receive (default 1)")
    sub.add_argument("--wait", type=float, default=0.0, metavar="S", help="long poll up to S seconds (default 0)")
    sub.add_argument("--delete", action="store_true", help="delete what was received (default: leave in flight)")
    sub.add_argument("--visibility-timeout", type=float, default=None, metavar="S", help="hide them S seconds")


def bench_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--script", type=Path, default=None, help="bench.py to run (default: jobs/bench.py)")
    sub.epilog = "Other options go to bench.py, e.g. rayqueue bench --runs 1 --sizes 100 1024 --json out.json"


# ---------------------------------------------------------------- the actions


def create(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    existed = args.name in client.list_queues()
    optional = {
        "partitions": args.partitions,
        "visibility_timeout_s": args.visibility_timeout,
        "retention_s": args.retention,
        "durability": args.durability,
    }
    queue = client.create_queue(
        args.name,
        max_messages=args.max_messages,
        max_message_bytes=args.max_message_bytes,
        **{key: value for key, value in optional.items() if value is not None},
    )
    return {"queue": queue.name, "created": not existed, "config": settings(queue)}


def list_queues(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    return {"queues": sorted(client.list_queues())}


def describe(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    queue = client.get_queue(args.name)
    stats = queue.stats()
    return {"queue": queue.name, "config": settings(queue), "stats": {**asdict(stats), "stored": stats.stored}}


def send(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    queue = client.get_queue(args.name)
    if args.batch < 1:
        raise InvalidArgument(f"--batch ({args.batch}) must be at least 1")
    if not args.bodies and sys.stdin.isatty():
        print("reading message bodies from standard input, one per line (Ctrl-D ends)", file=sys.stderr)
    bodies = [body.encode() for body in args.bodies] if args.bodies else stdin_lines(sys.stdin.buffer)
    ids: list[str] = []
    try:
        for chunk in chunks(bodies, args.batch):
            ids += queue.send_batch(chunk)
    except RayQueueError as error:
        error.add_note(f"{len(ids):,} messages were sent before it")
        raise
    return {"queue": queue.name, "sent": len(ids), "ids": ids}


def receive(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    queue = client.get_queue(args.name)
    messages = queue.receive(args.max, wait_s=args.wait, visibility_timeout_s=args.visibility_timeout)
    if args.delete and messages:
        queue.delete_batch([m.receipt for m in messages])
    return {"queue": queue.name, "deleted": args.delete, "messages": [message_dict(m) for m in messages]}


def purge(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    """Receive and delete until a receive finds nothing; in-flight messages stay."""
    queue = client.get_queue(args.name)
    deleted = 0
    while messages := queue.receive(BATCH):
        queue.delete_batch([m.receipt for m in messages])
        deleted += len(messages)
    return {"queue": queue.name, "deleted": deleted, "in_flight": queue.stats().in_flight}


def delete(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    client.delete_queue(args.name)
    return {"queue": args.name, "deleted": True}


def run_bench(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> int:
    """Run jobs/bench.py's ``main`` in this process; its exit code is ours."""
    if args.json or args.namespace != "rayqueue":
        parser.error("bench takes neither --json nor --namespace; it writes JSON with: rayqueue bench --json FILE")
    candidates = bench_candidates(args.script)
    script = next((path for path in candidates if path.is_file()), None)
    if script is None:
        looked = ", ".join(str(path) for path in candidates)
        return fail(
            EXIT_ERROR,
            f"no benchmark script found (looked for {looked}); run from a rayqueue checkout or pass --script",
        )
    bench = load_module(script)
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
    storage = ["--storage", args.storage] if args.storage else []
    return int(bench.main([*storage, *(a for a in extra if a != "--")]) or 0)


ACTIONS: dict[str, Callable[[rayqueue.Client, argparse.Namespace], Result]] = {
    "create": create,
    "list": list_queues,
    "describe": describe,
    "send": send,
    "receive": receive,
    "purge": purge,
    "delete": delete,
}

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "create": ("create a queue (or confirm one with the same settings)", create_arguments),
    "list": ("list the queues", lambda sub: None),
    "describe": ("show a queue's settings and message counts", name_argument),
    "send": ("send messages from arguments or from lines of standard input", send_arguments),
    "receive": ("receive messages, and delete them with --delete", receive_arguments),
    "purge": ("delete every visible message (receive and delete until empty)", name_argument),
    "delete": ("delete a queue and its stored data", name_argument),
    "bench": ("run the benchmark, jobs/bench.py", bench_arguments),
}


# ------------------------------------------------------------- action helpers


def settings(queue: rayqueue.Queue) -> dict[str, Any]:
    config = queue.config.model_dump()
    config.pop("name", None)
    return config


def message_dict(message: rayqueue.Message) -> dict[str, Any]:
    """A message for JSON: ``body`` as text when it is UTF-8 (else null), exact in ``body_base64``."""
    try:
        text: str | None = message.body.decode()
    except UnicodeDecodeError:
        text = None
    return {
        "id": message.id,
        "body": text,
        "body_base64": base64.b64encode(message.body).decode(),
        "receipt": message.receipt,
        "receive_count": message.receive_count,
        "sent_at": message.sent_at,
        "key": message.key,
        "attributes": message.attributes,
    }


def stdin_lines(stream: BinaryIO) -> Iterator[bytes]:
    """Each line without its line ending; empty lines are skipped."""
    for line in stream:
        body = line.rstrip(b"\r\n")
        if body:
            yield body


def chunks(bodies: Iterable[bytes], most: int) -> Iterator[list[bytes]]:
    """Runs of at most ``most`` bodies and ``MAX_BATCH_BYTES`` bytes, in order."""
    chunk: list[bytes] = []
    size = 0
    for body in bodies:
        if chunk and (len(chunk) == most or size + len(body) > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(body)
        size += len(body)
    if chunk:
        yield chunk


def bench_candidates(script: Path | None) -> list[Path]:
    """Where bench.py may be: the given path, else ./jobs, else the checkout rayqueue was installed from."""
    if script is not None:
        return [script]
    checkout = Path(rayqueue.__file__).resolve().parents[1]
    return list(dict.fromkeys([Path.cwd() / "jobs" / "bench.py", checkout / "jobs" / "bench.py"]))


def load_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("rayqueue_bench", path)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise InvalidArgument(f"{path} has no main(argv) function")
    return module


# ----------------------------------------------------------------- formatting


def format_create(result: Result) -> str:
    verb = "created queue" if result["created"] else "queue already exists with these settings:"
    return f"{verb} {result['queue']!r}\n" + table(result["config"].items())


def format_list(result: Result) -> str:
    return "\n".join(result["queues"]) if result["queues"] else "no queues"


def format_describe(result: Result) -> str:
    stats = result["stats"]
    counts = [(key, stats[key]) for key in ("visible", "in_flight", "stored", "stored_bytes")]
    header = ("partition", "visible", "in_flight", "stored_bytes")
    rows = [header] + [tuple(str(p[key]) for key in header) for p in stats["partitions"]]
    return "\n".join(
        [f"queue {result['queue']!r}", table(result["config"].items()), "messages", table(counts), columns(rows)]
    )


def format_send(result: Result) -> str:
    return f"sent {plural(result['sent'], 'message')} to {result['queue']!r}"


def format_receive(result: Result) -> str:
    messages = result["messages"]
    if not messages:
        return f"no messages in {result['queue']!r}"
    header = ("id", "receives") + (() if result["deleted"] else ("receipt",)) + ("body",)
    rows = [header]
    for m in messages:
        receipt = () if result["deleted"] else (m["receipt"],)
        rows.append((m["id"], str(m["receive_count"]), *receipt, printable(m)))
    done = "received and deleted" if result["deleted"] else "received (in flight until deleted or timed out)"
    return columns(rows) + f"\n{done}: {plural(len(messages), 'message')}"


def format_purge(result: Result) -> str:
    line = f"purged {plural(result['deleted'], 'message')} from {result['queue']!r}"
    if result["in_flight"]:
        line += f"; {result['in_flight']:,} in flight elsewhere come back unless their receivers delete them"
    return line


def format_delete(result: Result) -> str:
    return f"deleted queue {result['queue']!r}"


FORMATTERS: dict[str, Callable[[Result], str]] = {
    "create": format_create,
    "list": format_list,
    "describe": format_describe,
    "send": format_send,
    "receive": format_receive,
    "purge": format_purge,
    "delete": format_delete,
}


def table(pairs: Iterable[tuple[str, Any]]) -> str:
    """``key  value`` lines, indented, numbers with thousands separators."""
    return "\n".join(f"  {key:<22}{value:,}" if is_number(value) else f"  {key:<22}{value}" for key, value in pairs)


def columns(rows: list[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]) for row in rows)


def printable(message: dict[str, Any]) -> str:
    """The body on one line: control characters escaped, non-UTF-8 shown as base64."""
    if message["body"] is None:
        return "base64:" + message["body_base64"]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message["body"])


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


if __name__ == "__main__":
    sys.exit(main())
