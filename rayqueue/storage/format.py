"""The on-disk format: every object rayqueue writes, its name and its encoding.

Objects are written once and never changed. Segments and delete logs are Arrow
IPC files; the catalog, checkpoints and fences are JSON documents. Each carries
``FORMAT_VERSION`` so that a later version can still read what an earlier one
wrote, and refuses (never skips) what a later one wrote.

Since format 2 every object ends in a 12-byte trailer: ``b"RQCK"``, the format
version (uint32 LE) and a CRC-32 (uint32 LE) of everything before the CRC. It is
checked before anything is decoded, so damage is found before Arrow or JSON
parse it (a damaged Arrow file can crash the process, not just raise). Later
formats keep this trailer. Format-1 objects have none and are read as before,
validated in full after decoding. Leadership claims are raw random tokens, not
sealed: only their existence is ever read (see ``claim_name``).

Whatever fails in reading an object, checksum, decoding, validation or the
checks here, raises StorageCorrupt naming it.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from typing import Any

import numpy as np
import pyarrow as pa

from rayqueue.errors import StorageCorrupt
from rayqueue.schemas import SEGMENT_SCHEMA

#: Version of every object layout in this module; bump it and keep reading older ones.
FORMAT_VERSION = 2
#: The last format without the checksum trailer: its objects are read unchecked.
UNSEALED_FORMAT = 1

_TRAILER = struct.Struct("<4sII")
_TRAILER_MAGIC = b"RQCK"

_VERSION_KEY = b"rayqueue.format"
_KIND_KEY = b"rayqueue.kind"

#: A delete log: the offsets deleted by one group commit.
DELETES_SCHEMA = pa.schema([pa.field("offset", pa.int64(), nullable=False)])


def segment_name(first_offset: int, epoch: int) -> str:
    # Zero padding makes the lexical order of names the order of offsets.
    return f"segments/{first_offset:020d}-{epoch:010d}.arrow"


def deletes_name(seq: int, epoch: int) -> str:
    return f"deletes/{seq:020d}-{epoch:010d}.arrow"


_OBJECT_NAME = re.compile(r"(\d{20})-(\d{10})\.(?:arrow|json)")
_EPOCH_NAME = re.compile(r"(\d{10})\.(claim|fence\.json)")


def parse_object_name(name: str) -> tuple[int, int]:
    """``segments/00..42-00..1.arrow`` -> ``(42, 1)`` (segments, delete logs, checkpoints);
    raise ValueError if it is not exactly a name this module makes (so a stray
    ``1-2.arrow.bak`` is foreign, never mistaken for an object)."""
    match = _OBJECT_NAME.fullmatch(name.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"not a rayqueue object name: {name!r}")
    return int(match[1]), int(match[2])


def catalog_name(version: int) -> str:
    return f"catalog/{version:020d}.json"


def seal(payload: bytes) -> bytes:
    """``payload`` followed by the trailer: magic, format version, CRC-32 of both."""
    head = _TRAILER_MAGIC + FORMAT_VERSION.to_bytes(4, "little")
    return payload + head + zlib.crc32(head, zlib.crc32(payload)).to_bytes(4, "little")


def unseal(data: bytes, path: str) -> tuple[memoryview, int]:
    """The payload of a stored object and the format it was written in, its checksum
    verified. An object without a trailer is taken as format 1, which had none:
    decoding it then checks that it says so (a damaged trailer cannot pass as one)."""
    view = memoryview(data)
    if len(view) < _TRAILER.size or bytes(view[-_TRAILER.size : -8]) != _TRAILER_MAGIC:
        return view, UNSEALED_FORMAT
    _magic, version, crc = _TRAILER.unpack_from(view, len(view) - _TRAILER.size)
    payload = view[: -_TRAILER.size]
    if zlib.crc32(view[-_TRAILER.size : -4], zlib.crc32(payload)) != crc:
        raise StorageCorrupt(path, "checksum mismatch: the object changed after it was written")
    if version <= UNSEALED_FORMAT:
        raise StorageCorrupt(path, f"a checksum trailer naming format {version}, which had none")
    _check_version(version, version, path)
    return payload, version


def _check_version(tag: Any, sealed: int, path: str) -> None:
    """The format an object's content names must be one this version reads, and
    the one its trailer names (format 1: no trailer)."""
    if not isinstance(tag, int) or isinstance(tag, bool):
        raise StorageCorrupt(path, f"malformed format tag {tag!r}")
    if tag > FORMAT_VERSION:
        raise StorageCorrupt(path, f"format {tag} is newer than this rayqueue ({FORMAT_VERSION}): upgrade rayqueue")
    if sealed == UNSEALED_FORMAT and tag != UNSEALED_FORMAT:
        raise StorageCorrupt(path, f"format {tag} objects end in a checksum trailer; this one has none")
    if tag != sealed:
        raise StorageCorrupt(path, f"format tag {tag} differs from the trailer's format {sealed}")


def encode_table(table: pa.Table | pa.RecordBatch, kind: str, **metadata: Any) -> bytes:
    """Encode as a sealed Arrow IPC file whose schema metadata names its kind and format."""
    tags = {_VERSION_KEY: str(FORMAT_VERSION).encode(), _KIND_KEY: kind.encode()}
    tags.update({key.encode(): str(value).encode() for key, value in metadata.items()})
    schema = table.schema.with_metadata(tags)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:
        if isinstance(table, pa.RecordBatch):
            writer.write_batch(table.replace_schema_metadata(tags))
        else:
            writer.write_table(table.replace_schema_metadata(tags))
    return seal(sink.getvalue().to_pybytes())


def decode_table(data: bytes, path: str, kind: str, schema: pa.Schema) -> pa.Table:
    """Decode what :func:`encode_table` wrote (or format 1 did); raise StorageCorrupt
    for anything else: damaged, foreign, of another kind or schema, or too new."""
    payload, sealed = unseal(data, path)
    try:
        table = pa.ipc.open_file(pa.py_buffer(payload)).read_all()
        # Full validation before any value is looked at: a bad offset buffer in an
        # unchecked (format 1) object must not reach code that trusts it.
        table.validate(full=True)
    except Exception as error:  # pyarrow raises many kinds; all mean the same here
        raise StorageCorrupt(path, f"not a readable Arrow file ({type(error).__name__}: {error})") from None
    tags = table.schema.metadata or {}
    if tags.get(_KIND_KEY) != kind.encode():
        raise StorageCorrupt(path, f"expected a {kind} object, found {tags.get(_KIND_KEY)!r}")
    _check_version(_int_tag(tags.get(_VERSION_KEY), path), sealed, path)
    table = table.replace_schema_metadata(None)
    if not table.schema.equals(schema):
        raise StorageCorrupt(path, f"unexpected schema {table.schema}")
    for column, name in zip(table.columns, table.column_names):
        if not schema.field(name).nullable and column.null_count:
            raise StorageCorrupt(path, f"column {name!r} holds nulls")
    return table


def _int_tag(tag: bytes | None, path: str) -> int:
    # Only canonical decimal: "01", "+1" or " 1" were never written by rayqueue.
    if tag is None or not re.fullmatch(rb"0|[1-9]\d{0,8}", tag):
        raise StorageCorrupt(path, f"malformed format tag {tag!r}")
    return int(tag)


def encode_segment(batch: pa.RecordBatch, epoch: int) -> bytes:
    return encode_table(batch, "segment", epoch=epoch)


def decode_segment(data: bytes, path: str) -> pa.Table:
    return decode_table(data, path, "segment", SEGMENT_SCHEMA)


def encode_deletes(offsets: np.ndarray, epoch: int) -> bytes:
    batch = pa.record_batch([pa.array(offsets, pa.int64())], schema=DELETES_SCHEMA)
    return encode_table(batch, "deletes", epoch=epoch)


def decode_deletes(data: bytes, path: str) -> np.ndarray:
    offsets = decode_table(data, path, "deletes", DELETES_SCHEMA).column("offset").to_numpy()
    if len(offsets) and offsets.min() < 0:
        raise StorageCorrupt(path, "negative offset in a delete log")
    return offsets


def encode_catalog(version: int, queues: dict[str, Any]) -> bytes:
    document = {"format": FORMAT_VERSION, "version": version, "queues": queues}
    return seal(json.dumps(document, sort_keys=True, indent=1).encode())


def decode_catalog(data: bytes, path: str) -> tuple[int, dict[str, Any]]:
    """``(version, queues)`` of a catalog document; the queues' records are not checked here."""
    document = _decode_document(data, path)
    version, queues = document.get("version"), document.get("queues")
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(queues, dict):
        raise StorageCorrupt(path, "not a catalog document (version or queues missing)")
    return version, queues


def _decode_document(data: bytes, path: str) -> dict[str, Any]:
    """A sealed (or format-1) JSON object, its format checked."""
    payload, sealed = unseal(data, path)
    try:
        document = json.loads(bytes(payload))
    except Exception as error:  # bad UTF-8 or JSON, or nesting too deep (RecursionError)
        raise StorageCorrupt(path, f"not JSON ({type(error).__name__}: {error})") from None
    if not isinstance(document, dict):
        raise StorageCorrupt(path, "not a JSON object")
    _check_version(document.get("format"), sealed, path)
    return document


# ------------------------------------------------------ leadership and checkpoints


def claim_name(epoch: int) -> str:
    """Created (put-once) by the leader that takes ``epoch``; its existence fences older epochs.

    Its content is a random token, not sealed: nothing reads it but a retried
    create, to tell its own claim from another leader's."""
    return f"epochs/{epoch:010d}.claim"


def fence_name(epoch: int) -> str:
    return f"epochs/{epoch:010d}.fence.json"


def parse_epoch_name(name: str) -> tuple[int, str]:
    """``epochs/0000000003.claim`` -> ``(3, "claim")``; ``(3, "fence")`` for a fence;
    raise ValueError for any other name."""
    match = _EPOCH_NAME.fullmatch(name.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"not a rayqueue epoch object name: {name!r}")
    return int(match[1]), ("claim" if match[2] == "claim" else "fence")


def checkpoint_name(seq: int, epoch: int) -> str:
    return f"checkpoints/{seq:020d}-{epoch:010d}.json"


def encode_json(kind: str, body: dict[str, Any]) -> bytes:
    return seal(json.dumps({"format": FORMAT_VERSION, "kind": kind, **body}, sort_keys=True).encode())


def decode_json(data: bytes, path: str, kind: str) -> dict[str, Any]:
    document = _decode_document(data, path)
    if document.get("kind") != kind:
        raise StorageCorrupt(path, f"expected a {kind} document")
    return document
