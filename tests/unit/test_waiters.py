"""The wait queue behind slots, rate limiters and idle workers: order and cancellation."""

from __future__ import annotations

import asyncio

from plait.resources.waiters import WaitQueue


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_callers_are_woken_in_arrival_order() -> None:
    queue: WaitQueue[int] = WaitQueue()
    woken: list[int] = []

    async def park(value: int) -> None:
        await queue.wait(value)
        woken.append(value)

    tasks = [asyncio.create_task(park(value)) for value in range(4)]
    await settle()
    assert len(queue) == 4
    head = queue.head()
    assert head is not None
    assert head.value == 0
    assert queue.wake_one()
    assert queue.wake_one()
    await settle()
    assert woken == [0, 1]
    assert queue.wake_all() == 2
    await asyncio.gather(*tasks)
    assert woken == [0, 1, 2, 3]
    assert not queue.wake_one()
    assert queue.head() is None


async def test_a_cancelled_caller_leaves_the_queue_and_is_never_woken() -> None:
    changes: list[None] = []
    queue: WaitQueue[str] = WaitQueue(on_head_change=lambda: changes.append(None))
    first = asyncio.create_task(queue.wait("first"))
    second = asyncio.create_task(queue.wait("second"))
    await settle()
    assert len(changes) == 1  # "first" joined an empty queue
    first.cancel()
    await settle()
    assert first.cancelled()
    assert len(queue) == 1
    assert len(changes) == 2  # the head left, so whoever arms a timer re-checks
    head = queue.head()
    assert head is not None
    assert head.value == "second"
    assert queue.wake_all() == 1
    await second


async def test_a_wake_that_meets_a_cancellation_is_passed_on() -> None:
    lost: list[str] = []
    queue: WaitQueue[str] = WaitQueue(on_lost_wake=lost.append)
    task = asyncio.create_task(queue.wait("slot"))
    await settle()
    assert queue.wake_one()
    task.cancel()  # in the same tick: the wake-up cannot be used any more
    await settle()
    assert task.cancelled()
    assert lost == ["slot"]
    assert len(queue) == 0


async def test_clear_forgets_waiters_without_waking_them() -> None:
    queue: WaitQueue[None] = WaitQueue()
    task = asyncio.create_task(queue.wait(None))
    await settle()
    queue.clear()
    assert len(queue) == 0
    assert not queue.wake_one()
    assert not task.done()
    task.cancel()
    await settle()
    assert task.cancelled()
