"""The ``rayqueue`` command: manage queues and move messages from a shell.

    rayqueue create orders --max-messages 100000 --partitions 2
    rayqueue send orders "first" "second"            # bodies from arguments
    seq 1000 | rayqueue send orders                   # or one per line of standard input
    rayqueue describe orders --json                   # settings and stats, for scripts
    rayqueue receive orders --max 10 --wait 2 --delete
    rayqueue purge orders && rayqueue delete orders
    rayqueue top                                      # live view: rates, backlog, replicas
    rayqueue bench --runs 1                           # runs jobs/bench.py

It attaches to the Ray cluster at --address (or RAY_ADDRESS, or the one
`ray start --head` left running here), or starts a local Ray for the one command
(several seconds; a `ray start --head` makes each command take about one);
queues live on --storage (or RAYQUEUE_STORAGE), so they outlast it.
Output is for people by default and one JSON document with --json, errors
included: {"error": {"type": ..., "message": ..., "exit_code": ...}} on standard
output. Exit codes: 0 done, 1 a rayqueue or Ray error (the message names it),
2 bad usage (unknown options, invalid names or values), checked before Ray starts.

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
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

# Only light modules here (rayqueue imports its parts on first use): the argument
# checks run before Ray and Arrow are imported, let alone started.
import rayqueue
from rayqueue import defaults
from rayqueue.config import QueueConfig, check_queue_name
from rayqueue.errors import InvalidArgument, RayQueueError, RayUnavailable
from rayqueue.validation import check, count, more_than, number

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: Defaults of ``create`` (the Python API has none for these two).
DEFAULT_MAX_MESSAGES = 1_000_000
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
#: Messages per send_batch, receive and delete_batch call of send and purge.
BATCH = 1000
#: Seconds between two refreshes of ``top``.
TOP_INTERVAL_S = 1.0
#: Clears a terminal and puts the cursor top left (``top`` redraws in place on a terminal).
CLEAR_SCREEN = "\x1b[H\x1b[2J"

Result = dict[str, Any]


# ------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(json_errors="--json" in argv)
    args, extra = parser.parse_known_args(argv)
    if args.command != "bench" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    as_json = bool(getattr(args, "json", False))
    try:
        if args.command == "bench":
            return run_bench(parser, args, extra)
        check_arguments(args)  # before Ray: a bad name is refused at once
        if args.command == "top" and not as_json:
            return run_top(connect(args), args)
        result = ACTIONS[args.command](connect(args), args)
    except InvalidArgument as error:
        return fail(EXIT_USAGE, error, as_json)
    except RayQueueError as error:
        return fail(EXIT_ERROR, error, as_json)
    except ConnectionError as error:
        return fail(EXIT_ERROR, RayUnavailable(f"cannot reach Ray: {error}"), as_json)
    except KeyboardInterrupt:
        return fail(130, RayQueueError("interrupted"), as_json)
    print(json.dumps(result) if as_json else FORMATTERS[args.command](result), flush=True)
    return EXIT_OK


def fail(code: int, error: Exception, as_json: bool = False) -> int:
    """Report ``error``: one JSON document on standard output with --json, else a line on standard error."""
    message = explain(error)
    if as_json:
        document = {"error": {"type": type(error).__name__, "message": message, "exit_code": code}}
        print(json.dumps(document), flush=True)
    else:
        print(f"rayqueue: error: {message}", file=sys.stderr, flush=True)
    return code


def explain(error: Exception) -> str:
    return "; ".join([str(error), *getattr(error, "__notes__", ())])


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked without Ray; raises InvalidArgument (exit 2)."""
    if getattr(args, "name", None) is not None:
        check_queue_name(args.name)
    if args.command == "create":
        QueueConfig.build(name=args.name, **create_settings(args))
    if args.command == "send":
        check("--batch", args.batch, count(1, defaults.MAX_BATCH_MESSAGES))
    if args.command == "receive":
        check("--max", args.max, count(1, defaults.MAX_BATCH_MESSAGES))
        check("--wait", args.wait, number(0.0, defaults.MAX_WAIT_S))
        if args.visibility_timeout is not None:
            check("--visibility-timeout", args.visibility_timeout, number(0.0, defaults.MAX_VISIBILITY_TIMEOUT_S))
    if args.command == "top":
        check("--interval", args.interval, more_than(0.0, defaults.MAX_TOP_INTERVAL_S))


def connect(args: argparse.Namespace) -> rayqueue.Client:
    """Join Ray quietly (worker logs would mix with our output), then rayqueue.

    A dead address (RAY_ADDRESS, or the file a crashed Ray leaves) fails within
    seconds with what to do, instead of Ray's retries (see rayqueue.client.session)."""
    from rayqueue.client import session
    from rayqueue.client.connection import connect as connect_client

    session.ensure_ray(
        args.address,
        args.namespace,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    return connect_client(args.address, storage=args.storage, namespace=args.namespace)


# ----------------------------------------------------------------- the parser


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one JSON document when --json was given."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            fail(EXIT_USAGE, InvalidArgument(f"{self.prog}: {message}"), as_json=True)
            sys.exit(EXIT_USAGE)
        super().error(message)


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    Parser.json_errors = json_errors
    parser = Parser(
        prog="rayqueue",
        description=plain(__doc__.split("\n\nEach command")[0]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rayqueue {rayqueue.__version__}")
    add_common(parser, top=True)  # real defaults at the top level
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, (helptext, arguments) in COMMANDS.items():
        common = Parser(add_help=False)
        # bench passes --json FILE on to bench.py and runs in the default namespace
        add_common(common, top=False, connection_only=name == "bench")
        sub = commands.add_parser(name, help=helptext, description=helptext, parents=[common])
        arguments(sub)
    return parser


def plain(text: str) -> str:
    """Docstring markup out of help text: ``name`` reads as name on a terminal."""
    return text.replace("``", "")


def add_common(parser: argparse.ArgumentParser, *, top: bool, connection_only: bool = False) -> None:
    """The global options, also accepted after the command, where they default to "not given"."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--address", default=default(None), help="Ray address (default: RAY_ADDRESS or local)")
    parser.add_argument("--storage", default=default(None), help="fsspec URL (default: RAYQUEUE_STORAGE)")
    if connection_only:
        return
    parser.add_argument("--namespace", default=default(defaults.NAMESPACE), help="rayqueue's Ray namespace")
    parser.add_argument("--json", action="store_true", default=default(False), help="print one JSON document")


def create_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name")
    sub.add_argument("--max-messages", type=int, default=DEFAULT_MAX_MESSAGES, help="queue size (default 1,000,000)")
    sub.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, help="default 262,144")
    sub.add_argument("--partitions", type=int, default=None, help="default 1")
    sub.add_argument("--visibility-timeout", type=float, default=None, metavar="S", help="seconds (default 30)")
    sub.add_argument("--retention", type=float, default=None, metavar="S", help="seconds (default 4 days)")
    sub.add_argument("--durability", choices=("storage", "replicas"), default=None, help="default storage")


def top_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--interval", type=float, default=TOP_INTERVAL_S, metavar="S", help="refresh every S seconds")
    sub.add_argument("--iterations", type=int, default=None, metavar="N", help="stop after N refreshes")
    sub.epilog = (
        "Rates are over the last interval: sent/s from the partitions' send counters, deleted/s as "
        "sent minus the change in stored messages. With --json: one snapshot (rates over one "
        "interval), then exit."
    )


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


def create_settings(args: argparse.Namespace) -> dict[str, Any]:
    """create's options as create_queue's keyword arguments (those not given are left out)."""
    optional = {
        "partitions": args.partitions,
        "visibility_timeout_s": args.visibility_timeout,
        "retention_s": args.retention,
        "durability": args.durability,
    }
    given = {key: value for key, value in optional.items() if value is not None}
    return {"max_messages": args.max_messages, "max_message_bytes": args.max_message_bytes, **given}


def create(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    existed = args.name in client.list_queues()
    queue = client.create_queue(args.name, **create_settings(args))
    return {"queue": queue.name, "created": not existed, "config": settings(queue)}


def list_queues(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    return {"queues": sorted(client.list_queues())}


def describe(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    queue = client.get_queue(args.name)
    stats = queue.stats()
    return {"queue": queue.name, "config": settings(queue), "stats": {**asdict(stats), "stored": stats.stored}}


def send(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    from rayqueue.client.rows import batches  # imports pyarrow: not before a command runs

    queue = client.get_queue(args.name)
    if not args.bodies and sys.stdin.isatty():
        print("reading message bodies from standard input, one per line (Ctrl-D ends)", file=sys.stderr)
    bodies = [body.encode() for body in args.bodies] if args.bodies else stdin_lines(sys.stdin.buffer)
    ids: list[str] = []
    try:
        for chunk in batches(bodies, args.batch):
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


class Top:
    """Samples every queue's stats; rates come from the difference of two samples."""

    def __init__(self, client: rayqueue.Client) -> None:
        self._client = client
        self._queues: dict[str, rayqueue.Queue] = {}
        self._last: dict[str, tuple[float, int, int]] = {}  # name -> (time, sent_total, stored)

    def sample(self) -> Result:
        names = sorted(self._client.list_queues())
        rows = []
        for name in names:
            try:
                rows.append(self._row(name))
            except rayqueue.QueueNotFound:  # deleted since the listing
                self._queues.pop(name, None)
        self._last = {name: self._last[name] for name in names if name in self._last}
        return {"queues": rows, "at": time.time()}

    def _row(self, name: str) -> dict[str, Any]:
        queue = self._queues.get(name) or self._queues.setdefault(name, self._client.get_queue(name))
        stats = queue.stats()
        now = time.monotonic()
        sent_total = sum(p.sent_total for p in stats.partitions)
        previous = self._last.get(name)
        self._last[name] = (now, sent_total, stats.stored)
        send_rate = delete_rate = None
        if previous is not None and now > previous[0]:
            seconds = now - previous[0]
            # sent_total restarts from 0 with a new leader: a drop is no negative rate
            sent = max(0, sent_total - previous[1])
            send_rate = sent / seconds
            delete_rate = max(0, sent - (stats.stored - previous[2])) / seconds
        config = queue.config
        return {
            "queue": name,
            "partitions": len(stats.partitions),
            "send_per_s": None if send_rate is None else round(send_rate, 1),
            "delete_per_s": None if delete_rate is None else round(delete_rate, 1),
            "visible": stats.visible,
            "in_flight": stats.in_flight,
            "stored": stats.stored,
            "stored_bytes": stats.stored_bytes,
            "replicas_in_sync": sum(p.replicas_in_sync for p in stats.partitions),
            "replicas": config.replicas * len(stats.partitions),
        }


def top(client: rayqueue.Client, args: argparse.Namespace) -> Result:
    """One snapshot, rates over one interval (for --json)."""
    sampler = Top(client)
    sampler.sample()
    time.sleep(args.interval)
    return sampler.sample()


def run_top(client: rayqueue.Client, args: argparse.Namespace) -> int:
    """Redraw every ``--interval`` seconds until Ctrl-C (or ``--iterations``)."""
    sampler = Top(client)
    clear = CLEAR_SCREEN if sys.stdout.isatty() else ""
    done = 0
    try:
        while args.iterations is None or done < args.iterations:
            started = time.monotonic()
            frame = format_top(sampler.sample())
            print(f"{clear}{frame}\n", flush=True)
            done += 1
            if args.iterations is None or done < args.iterations:
                time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def run_bench(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> int:
    """Run jobs/bench.py's ``main`` in this process; its exit code is ours."""
    if args.json or args.namespace != defaults.NAMESPACE:
        parser.error("bench takes neither --json nor --namespace; it writes JSON with: rayqueue bench --json FILE")
    candidates = bench_candidates(args.script)
    script = next((path for path in candidates if path.is_file()), None)
    if script is None:
        looked = ", ".join(str(path) for path in candidates)
        return fail(
            EXIT_ERROR,
            RayQueueError(
                f"no benchmark script found (looked for {looked}); run from a rayqueue checkout or pass --script"
            ),
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
    "top": top,
}

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "create": ("create a queue (or confirm one with the same settings)", create_arguments),
    "list": ("list the queues", lambda sub: None),
    "describe": ("show a queue's settings and message counts", name_argument),
    "send": ("send messages from arguments or from lines of standard input", send_arguments),
    "receive": ("receive messages, and delete them with --delete", receive_arguments),
    "purge": ("delete every visible message (receive and delete until empty)", name_argument),
    "delete": ("delete a queue and its stored data", name_argument),
    "top": ("a live view of every queue: rates, backlog, in flight, replicas (Ctrl-C ends)", top_arguments),
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
        rows.append((escaped(m["id"]), str(m["receive_count"]), *receipt, printable(m)))
    done = "received and deleted" if result["deleted"] else "received (in flight until deleted or timed out)"
    return columns(rows) + f"\n{done}: {plural(len(messages), 'message')}"


def format_purge(result: Result) -> str:
    line = f"purged {plural(result['deleted'], 'message')} from {result['queue']!r}"
    if result["in_flight"]:
        line += f"; {result['in_flight']:,} in flight elsewhere come back unless their receivers delete them"
    return line


def format_delete(result: Result) -> str:
    return f"deleted queue {result['queue']!r}"


def format_top(result: Result) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result["at"]))
    if not result["queues"]:
        return f"rayqueue top  {stamp}\nno queues"
    header = ("queue", "parts", "sent/s", "deleted/s", "visible", "in flight", "stored", "stored MB", "in sync")
    rows = [header]
    for q in result["queues"]:
        rows.append(
            (
                q["queue"],
                str(q["partitions"]),
                rate(q["send_per_s"]),
                rate(q["delete_per_s"]),
                f"{q['visible']:,}",
                f"{q['in_flight']:,}",
                f"{q['stored']:,}",
                f"{q['stored_bytes'] / 1e6:,.1f}",
                f"{q['replicas_in_sync']}/{q['replicas']}" if q["replicas"] else "-",
            )
        )
    return f"rayqueue top  {stamp}  ({plural(len(result['queues']), 'queue')})\n" + columns(rows, right_from=1)


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


FORMATTERS: dict[str, Callable[[Result], str]] = {
    "create": format_create,
    "list": format_list,
    "describe": format_describe,
    "send": format_send,
    "receive": format_receive,
    "purge": format_purge,
    "delete": format_delete,
    "top": format_top,
}


def table(pairs: Iterable[tuple[str, Any]]) -> str:
    """``key  value`` lines, indented, the values in one column (two spaces after the
    longest key), numbers with thousands separators."""
    pairs = list(pairs)
    width = max((len(key) for key, _ in pairs), default=0) + 2
    shown = [(key, f"{value:,}" if is_number(value) else str(value)) for key, value in pairs]
    return "\n".join(f"  {key:<{width}}{value}" for key, value in shown)


def columns(rows: Sequence[tuple[str, ...]], right_from: int | None = None) -> str:
    """Rows as columns, left-aligned (right-aligned from column ``right_from`` on, for
    numbers); the last column is not padded when left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def cell(i: int, text: str) -> str:
        if right_from is not None and i >= right_from:
            return text.rjust(widths[i])
        return text if i == len(widths) - 1 else text.ljust(widths[i])

    return "\n".join("  ".join(cell(i, text) for i, text in enumerate(row)) for row in rows)


def printable(message: dict[str, Any]) -> str:
    """The body on one line: control characters escaped, non-UTF-8 shown as base64."""
    if message["body"] is None:
        return "base64:" + message["body_base64"]
    return escaped(message["body"])


def escaped(text: str) -> str:
    """``text`` on one line with control characters escaped: what a producer put in a
    body or a message id must not move the cursor or recolour the user's terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


if __name__ == "__main__":
    sys.exit(main())
