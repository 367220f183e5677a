"""How format_v1/ was made: a small storage tree written by rayqueue's format-1 code.

Kept for the record; it needs the old package: `git archive 0082fd0 rayqueue | tar -x -C OLD`,
then `PYTHONPATH=OLD python tests/unit/data/make_format_v1.py tests/unit/data/format_v1`.
"""

import shutil
import sys
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from rayqueue.storage import CatalogStore, ObjectStore, PartitionStore, format
from rayqueue.storage.partition_store import Checkpoint

assert format.FORMAT_VERSION == 1
out = sys.argv[1]
shutil.rmtree(out, ignore_errors=True)
objects = ObjectStore(f"file://{out}")
S = format.SEGMENT_SCHEMA


def segment(first, bodies, keys=None):
    n = len(bodies)
    return pa.record_batch(
        [
            pa.array(range(first, first + n), pa.int64()),
            pa.array([f"golden-{first + i}" for i in range(n)], pa.string()),
            pa.array(bodies, pa.binary()),
            pa.array(keys or [None] * n, pa.string()),
            pa.array([[("k", "v")]] + [None] * (n - 1), S.field("attributes").type),
            pa.array([datetime(2024, 1, 1, 0, 0, first, tzinfo=UTC)] * n, S.field("sent_at").type),
        ],
        schema=S,
    )


one = PartitionStore(objects, "orders", 0, "u")
one.take_over()  # epoch 1
one.write_segment(segment(0, [b"a", b"b", b"c"], ["x", None, "y"]))
one.write_segment(segment(3, [b"d", b"e"]))
one.write_deletes(np.array([1], np.int64), seq=0)
one.write_checkpoint(
    Checkpoint(
        seq=1,
        epoch=1,
        next_offset=5,
        segments=(format.segment_name(0, 1), format.segment_name(3, 1)),
        deleted=((1, 2),),
    )
)
one.write_deletes(np.array([3], np.int64), seq=1)
two = PartitionStore(objects, "orders", 0, "u")
two.take_over()  # epoch 2: a fence over epoch 1
two.write_segment(segment(5, [b"f"]))
catalog = CatalogStore(objects)
catalog.save(1, {"orders": {"uid": "u", "partitions": 1}})
catalog.save(2, {"orders": {"uid": "u", "partitions": 1}, "other": {"uid": "w", "partitions": 2}})
