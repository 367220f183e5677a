"""The Arrow schemas that producers, partitions, storage and consumers share.

Shared types live here, not in the module of one side, so the client never
imports the partition's or the storage's logic to learn a column's type.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

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

#: Columns a delivery adds to the segment's own: the delivery's count and token, and the
#: epoch of the leader that served it (receipts carry it, so a delivery can be attributed).
DELIVERY_SCHEMA = pa.schema(
    [
        *SEGMENT_SCHEMA,
        pa.field("receive_count", pa.int32()),
        pa.field("token", pa.int64()),
        pa.field("epoch", pa.int64()),
    ]
)


def body_sizes(bodies: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each body's length in bytes, from the offsets (no compute kernel per call)."""
    if isinstance(bodies, pa.ChunkedArray):
        if bodies.num_chunks != 1:
            return (
                np.concatenate([body_sizes(chunk) for chunk in bodies.chunks])
                if bodies.num_chunks
                else np.empty(0, np.int64)
            )
        bodies = bodies.chunk(0)
    width = np.int64 if pa.types.is_large_binary(bodies.type) or pa.types.is_large_string(bodies.type) else np.int32
    offsets = np.frombuffer(bodies.buffers()[1], width)[bodies.offset : bodies.offset + len(bodies) + 1]
    return np.diff(offsets).astype(np.int64, copy=False)
