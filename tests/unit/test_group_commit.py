"""GroupCommit: one flush at a time, everything that queued meanwhile in the next one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rayqueue.partition.group_commit import GroupCommit


class Flusher:
    """A flush that records its groups and can be held open or made to fail."""

    def __init__(self) -> None:
        self.groups: list[list[Any]] = []
        self.gate: asyncio.Event | None = None
        self.fail_with: BaseException | None = None
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[Any]) -> None:
        self.groups.append(list(items))
        failure = self.fail_with  # decided when the flush starts
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if failure is not None:
                raise failure
        finally:
            self.running -= 1

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def let_go(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_lone_item_is_flushed_at_once():
    async def main() -> None:
        flusher = Flusher()
        commit = GroupCommit(flusher)
        await asyncio.wait_for(commit.submit("a"), 1.0)
        assert flusher.groups == [["a"]]

    asyncio.run(main())


def test_items_submitted_during_a_flush_go_together_into_the_next():
    async def main() -> None:
        flusher = Flusher()
        commit = GroupCommit(flusher)
        flusher.hold()
        first = asyncio.ensure_future(commit.submit("a"))
        await settle()
        later = [asyncio.ensure_future(commit.submit(item)) for item in ("b", "c", "d")]
        await settle()
        assert flusher.groups == [["a"]]  # b, c, d wait for the running flush

        flusher.let_go()
        await asyncio.wait_for(asyncio.gather(first, *later), 1.0)

        assert flusher.groups == [["a"], ["b", "c", "d"]]

    asyncio.run(main())


def test_items_submitted_together_share_one_flush():
    async def main() -> None:
        flusher = Flusher()
        commit = GroupCommit(flusher)
        await asyncio.gather(*(commit.submit(i) for i in range(20)))
        assert flusher.groups == [list(range(20))]

    asyncio.run(main())


def test_flushes_never_overlap():
    async def main() -> None:
        flusher = Flusher()
        commit = GroupCommit(flusher)
        flusher.hold()
        waiters = [asyncio.ensure_future(commit.submit(i)) for i in range(3)]
        await settle()
        waiters += [asyncio.ensure_future(commit.submit(i)) for i in range(3, 6)]
        await settle()
        flusher.let_go()
        await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
        assert flusher.most_running == 1

    asyncio.run(main())


def test_failing_flush_raises_in_every_submitter_of_its_group():
    async def main() -> None:
        flusher = Flusher()
        commit = GroupCommit(flusher)
        flusher.fail_with = OSError("disk gone")
        results = await asyncio.gather(*(commit.submit(i) for i in range(3)), return_exceptions=True)
        assert len(flusher.groups) == 1
        assert all(isinstance(r, OSError) and str(r) == "disk gone" for r in results)

    asyncio.run(main())


def test_groups_after_a_failed_one_still_work():
    async def main() -> None:
        flusher = Flusher()
        commit = GroupCommit(flusher)
        flusher.hold()
        flusher.fail_with = OSError("disk gone")
        failing = asyncio.ensure_future(commit.submit("a"))
        await settle()
        later = [asyncio.ensure_future(commit.submit(item)) for item in ("b", "c")]
        await settle()

        flusher.fail_with = None  # storage is back before the next group goes out
        flusher.let_go()
        with pytest.raises(OSError):
            await asyncio.wait_for(failing, 1.0)
        await asyncio.wait_for(asyncio.gather(*later), 1.0)

        await asyncio.wait_for(commit.submit("d"), 1.0)
        assert flusher.groups == [["a"], ["b", "c"], ["d"]]

    asyncio.run(main())


def test_max_weight_caps_a_group():
    async def main() -> None:
        flusher = Flusher()
        commit = GroupCommit(flusher, weight=len, max_weight=10)
        flusher.hold()
        first = asyncio.ensure_future(commit.submit("x"))
        await settle()
        items = ["aaaa", "bbbb", "cccc", "dd", "eeeeeeeeee"]
        later = [asyncio.ensure_future(commit.submit(item)) for item in items]
        await settle()
        flusher.let_go()
        await asyncio.wait_for(asyncio.gather(first, *later), 1.0)

        assert flusher.groups == [["x"], ["aaaa", "bbbb"], ["cccc", "dd"], ["eeeeeeeeee"]]
        assert all(sum(map(len, group)) <= 10 for group in flusher.groups)

    asyncio.run(main())


def test_item_heavier_than_max_weight_still_goes_alone():
    async def main() -> None:
        flusher = Flusher()
        commit = GroupCommit(flusher, weight=len, max_weight=3)
        await asyncio.gather(commit.submit("toolong"), commit.submit("ab"))
        assert flusher.groups == [["toolong"], ["ab"]]

    asyncio.run(main())


def test_a_cancelled_submitter_does_not_break_its_group():
    async def main() -> None:
        flusher = Flusher()
        commit = GroupCommit(flusher)
        flusher.hold()
        first = asyncio.ensure_future(commit.submit("a"))
        await settle()
        cancelled = asyncio.ensure_future(commit.submit("b"))
        kept = asyncio.ensure_future(commit.submit("c"))
        await settle()
        cancelled.cancel()
        flusher.let_go()
        await asyncio.wait_for(asyncio.gather(first, kept), 1.0)
        assert cancelled.cancelled()

    asyncio.run(main())
