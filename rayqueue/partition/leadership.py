"""Read-index: a leader answers from memory only once storage confirms it still leads.

Writes are fenced by storage itself (a leader checks for a newer claim after each
put). Calls answered from memory are not: a receive, a change of visibility, a
delete with nothing to write. A replaced leader that still runs would otherwise
hand out messages whose deletes its successor acknowledged.

``Leadership.confirm`` returns only after a look for a newer epoch's claim that
*began after the call arrived* found none; calls that arrive together share one
look (a ``GroupCommit`` of looks), so the cost is one storage request per batch
of calls, not per call. Any error refuses. No clocks are involved: a successor
claims before it serves, so a look that finds no claim happened before the
successor's first answer (claims, HEADs and LISTs are linearizable on local
disks and on S3).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rayqueue.errors import PartitionFenced
from rayqueue.partition.group_commit import GroupCommit


class Leadership:
    def __init__(self, look: Callable[[], Awaitable[None]], on_fenced: Callable[[], None]) -> None:
        """``look`` raises PartitionFenced if a newer epoch has been claimed (and anything
        else if it cannot tell); ``on_fenced`` is told when one has."""
        self._look = look
        self._on_fenced = on_fenced
        self._looks: GroupCommit[None] = GroupCommit(self._run)
        #: Looks made (for tests and storage-cost figures).
        self.looks = 0

    async def confirm(self) -> None:
        """Return once a look that began after this call found no newer leader; raise otherwise."""
        await self._looks.submit(None)

    async def _run(self, _calls: list[None]) -> None:
        self.looks += 1
        try:
            await self._look()
        except PartitionFenced:
            self._on_fenced()
            raise
