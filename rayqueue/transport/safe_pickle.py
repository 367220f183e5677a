"""What the direct channel may unpickle: an explicit allow-list of the types its frames carry.

A pickle names the callables that rebuild it (``module.name``), and the standard
unpickler imports and calls whatever is named: for anyone who can send a frame,
that is code execution. The channel's frames carry a small, closed set of values,
the arguments and results of the data and replica calls (``WIRE_METHODS`` and
``REPLICA_WIRE_METHODS`` in ``rayqueue.actors.partition_actor``) and the errors
they raise:

- Arrow tables and record batches (rows sent, messages received, replicated
  segments), numpy arrays (offsets and tokens to delete), lists of receipt strings,
  ints, floats, bools, ``None``;
- ``PartitionStats``, ``Parked``;
- exceptions: rayqueue's own, Python's built-in ones and Arrow's.

Anything else is refused with ``ForbiddenType`` before it is imported or called.
A new data call that carries another type must add it here (tests/unit/test_wire.py
pickles real values of every call, so a missing entry fails there first).
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Iterable
from typing import Any

from rayqueue.errors import BadFrame, ForbiddenType

#: Classes and rebuilding functions, by module, exactly as pickles name them. Only pure
#: constructors: each builds a value from data and runs nothing the data names.
ALLOWED: dict[str, frozenset[str]] = {
    # The few built-in values that pickle names instead of encoding with an opcode.
    "builtins": frozenset({"bytearray", "complex"}),
    # numpy arrays and scalars. numpy 2 writes numpy._core; a numpy 1 peer writes numpy.core.
    "numpy": frozenset({"dtype", "ndarray"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),
    # Arrow: tables, record batches, arrays, schemas and fields, the data types of
    # rayqueue's schemas (and their close kin), buffers.
    "pyarrow.lib": frozenset(
        {
            "_reconstruct_table",
            "_reconstruct_record_batch",
            "_restore_array",
            "chunked_array",
            "py_buffer",
            "schema",
            "field",
            "type_for_alias",
            "binary",
            "decimal128",
            "decimal256",
            "dictionary",
            "large_list",
            "list_",
            "map_",
            "struct",
            "timestamp",
        }
    ),
    # rayqueue's errors all pickle through _rebuild (see RayQueueError.__reduce__).
    "rayqueue.errors": frozenset({"_rebuild"}),
    "rayqueue.message": frozenset({"PartitionStats"}),
    "rayqueue.transport.wire": frozenset({"Parked"}),
}
#: Modules whose exception classes may cross too: an error raised by a call comes back
#: as itself. Building an exception only stores its arguments.
EXCEPTION_MODULES = frozenset({"builtins", "pyarrow.lib", "rayqueue.errors"})


class _Restricted(pickle.Unpickler):
    def __init__(self, data: bytes | bytearray, buffers: Iterable[Any], peer: str) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._peer = peer

    def find_class(self, module: str, name: str) -> Any:
        if name in ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module in EXCEPTION_MODULES:
            found = getattr(importlib.import_module(module), name, None)
            if isinstance(found, type) and issubclass(found, Exception):
                return found
        raise ForbiddenType(self._peer, module, name)


def loads(data: bytes | bytearray, buffers: Iterable[Any], peer: str) -> Any:
    """The value in a frame's pickle, built only from allowed types.

    Raises ``ForbiddenType`` for a type off the list, ``BadFrame`` for a pickle that
    does not load (truncated, or written by another version of a class).
    """
    try:
        return _Restricted(data, buffers, peer).load()
    except BadFrame:
        raise
    except Exception as error:
        raise BadFrame(peer, f"does not unpickle: {type(error).__name__}: {error}") from None
