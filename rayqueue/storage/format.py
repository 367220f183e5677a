"""The on-disk format: every object rayqueue writes, its name and its encoding.

Objects are written once and never changed. Segments and delete logs are Arrow
IPC files (the footer makes a torn write detectable: a file cut short does not
open); the catalog is a JSON document. Each carries ``FORMAT_VERSION`` so that a
later version can still read what an earlier one wrote.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from rayqueue.errors import StorageCorrupt

#: Version of every object layout in this module; bump it and keep reading older ones.
FORMAT_VERSION = 1

_VERSION_KEY = b"rayqueue.format"
_KIND_KEY = b"rayqueue.kind"

#: What producers hand to a partition: one row per message.
SEND_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("body", pa.binary(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("attributes", pa.map_(pa.string(), pa.string())),
    ]
)

#: A stored segment: the send schema plus the partition's offset and receive time.
SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("offset", pa.int64(), nullable=False),
        *SEND_SCHEMA,
        pa.field("sent_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

#: A delete log: the offsets deleted by one group commit.
DELETES_SCHEMA = pa.schema([pa.field("offset", pa.int64(), nullable=False)])


def segment_name(first_offset: int, epoch: int) -> str:
    # Zero padding makes the lexical order of names the order of offsets.
    return f"segments/{first_offset:020d}-{epoch:010d}.arrow"


def deletes_name(seq: int, epoch: int) -> str:
    return f"deletes/{seq:020d}-{epoch:010d}.arrow"


def parse_object_name(name: str) -> tuple[int, int]:
    """``segments/00..42-00..1.arrow`` -> ``(42, 1)`` (segments, delete logs, checkpoints);
    raise ValueError if it is not ours."""
    stem = name.rsplit("/", 1)[-1].split(".", 1)[0]
    first, epoch = stem.split("-")
    return int(first), int(epoch)


def catalog_name(version: int) -> str:
    return f"catalog/{version:020d}.json"


def encode_table(table: pa.Table | pa.RecordBatch, kind: str, **metadata: Any) -> bytes:
    """Encode as an Arrow IPC file whose schema metadata names its kind and format."""
    tags = {_VERSION_KEY: str(FORMAT_VERSION).encode(), _KIND_KEY: kind.encode()}
    tags.update({key.encode(): str(value).encode() for key, value in metadata.items()})
    schema = table.schema.with_metadata(tags)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:
        if isinstance(table, pa.RecordBatch):
            writer.write_batch(table.replace_schema_metadata(tags))
        else:
            writer.write_table(table.replace_schema_metadata(tags))
    return sink.getvalue().to_pybytes()


def decode_table(data: bytes, path: str, kind: str, schema: pa.Schema) -> pa.Table:
    """Decode what :func:`encode_table` wrote; raise StorageCorrupt for anything else."""
    try:
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as error:
        raise StorageCorrupt(path, f"not a complete Arrow file ({error})") from None
    tags = table.schema.metadata or {}
    if tags.get(_KIND_KEY) != kind.encode():
        raise StorageCorrupt(path, f"expected a {kind} object, found {tags.get(_KIND_KEY)!r}")
    try:
        version = int(tags.get(_VERSION_KEY, b"0"))
    except ValueError:
        raise StorageCorrupt(path, f"malformed format tag {tags.get(_VERSION_KEY)!r}") from None
    if version > FORMAT_VERSION:
        raise StorageCorrupt(path, f"format {version} is newer than this rayqueue ({FORMAT_VERSION})")
    table = table.replace_schema_metadata(None)
    if not table.schema.equals(schema):
        raise StorageCorrupt(path, f"unexpected schema {table.schema}")
    return table


def encode_segment(batch: pa.RecordBatch, epoch: int) -> bytes:
    return encode_table(batch, "segment", epoch=epoch)


def decode_segment(data: bytes, path: str) -> pa.Table:
    return decode_table(data, path, "segment", SEGMENT_SCHEMA)


def encode_deletes(offsets: np.ndarray, epoch: int) -> bytes:
    batch = pa.record_batch([pa.array(offsets, pa.int64())], schema=DELETES_SCHEMA)
    return encode_table(batch, "deletes", epoch=epoch)


def decode_deletes(data: bytes, path: str) -> np.ndarray:
    table = decode_table(data, path, "deletes", DELETES_SCHEMA)
    return table.column("offset").to_numpy()


def encode_catalog(version: int, queues: dict[str, Any]) -> bytes:
    document = {"format": FORMAT_VERSION, "version": version, "queues": queues}
    return json.dumps(document, sort_keys=True, indent=1).encode()


def decode_catalog(data: bytes, path: str) -> tuple[int, dict[str, Any]]:
    try:
        document = json.loads(data)
        if document["format"] > FORMAT_VERSION:
            raise StorageCorrupt(path, f"catalog format {document['format']} is too new")
        return int(document["version"]), dict(document["queues"])
    except (ValueError, KeyError, TypeError) as error:
        raise StorageCorrupt(path, f"not a catalog document ({error})") from None


# ------------------------------------------------------ leadership and checkpoints


def claim_name(epoch: int) -> str:
    """Created (put-once) by the leader that takes ``epoch``; its existence fences older epochs."""
    return f"epochs/{epoch:010d}.claim"


def fence_name(epoch: int) -> str:
    return f"epochs/{epoch:010d}.fence.json"


def parse_epoch_name(name: str) -> tuple[int, str]:
    """``epochs/0000000003.claim`` -> ``(3, "claim")``; ``(3, "fence")`` for a fence."""
    stem = name.rsplit("/", 1)[-1]
    number, _, kind = stem.partition(".")
    return int(number), ("fence" if kind.startswith("fence") else kind)


def checkpoint_name(seq: int, epoch: int) -> str:
    return f"checkpoints/{seq:020d}-{epoch:010d}.json"


def encode_json(kind: str, body: dict[str, Any]) -> bytes:
    return json.dumps({"format": FORMAT_VERSION, "kind": kind, **body}, sort_keys=True).encode()


def decode_json(data: bytes, path: str, kind: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as error:
        raise StorageCorrupt(path, f"not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("kind") != kind:
        raise StorageCorrupt(path, f"expected a {kind} document")
    if document.get("format", 0) > FORMAT_VERSION:
        raise StorageCorrupt(path, f"format {document['format']} is newer than this rayqueue ({FORMAT_VERSION})")
    return document


def body_sizes(bodies: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each body's length in bytes, from the offsets (no compute kernel per call)."""
    if isinstance(bodies, pa.ChunkedArray):
        if bodies.num_chunks != 1:
            return np.concatenate([body_sizes(chunk) for chunk in bodies.chunks]) if bodies.num_chunks else np.empty(0, np.int64)
        bodies = bodies.chunk(0)
    width = np.int64 if pa.types.is_large_binary(bodies.type) or pa.types.is_large_string(bodies.type) else np.int32
    offsets = np.frombuffer(bodies.buffers()[1], width)[bodies.offset : bodies.offset + len(bodies) + 1]
    return np.diff(offsets).astype(np.int64, copy=False)
