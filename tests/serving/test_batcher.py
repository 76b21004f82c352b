"""batcher.GpuBatcher: batches form when the previous one is done, from everything queued by then."""

import asyncio

import pytest

from zimage_serve.serving.batcher import GpuBatcher


def _batcher(sizes, delay=0.05, fail_on=None, wait_s=0.01):
    async def run(items):
        sizes.append(len(items))
        await asyncio.sleep(delay)
        if fail_on is not None and fail_on in items:
            raise ValueError(f"bad item {fail_on}")
        return [item * 10 for item in items]

    return GpuBatcher(run, max_batch_size=4, wait_s=wait_s)


def test_a_busy_worker_makes_full_batches_and_results_keep_their_callers():
    sizes = []

    async def go():
        batcher = _batcher(sizes)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.02)  # the first batch (of one) is running; nine more arrive one by one
        rest = []
        for i in range(1, 10):
            rest.append(asyncio.create_task(batcher.submit(i)))
            await asyncio.sleep(0.001)
        return await asyncio.gather(first, *rest)

    assert asyncio.run(go()) == [i * 10 for i in range(10)]
    assert sizes == [1, 4, 4, 1]


def test_a_lone_request_waits_at_most_wait_s():
    sizes = []

    async def go():
        batcher = _batcher(sizes, delay=0)
        loop = asyncio.get_running_loop()
        t = loop.time()
        assert await batcher.submit(3) == 30
        return loop.time() - t

    assert asyncio.run(go()) < 0.5 and sizes == [1]


def test_without_a_wait_a_burst_still_shares_a_batch_and_later_arrivals_fill_the_next():
    """wait_s=0 (the generator's default): requests that arrive together make one batch; those that
    arrive while it runs make full batches after it."""
    sizes = []

    async def go():
        batcher = _batcher(sizes, wait_s=0)
        burst = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        later = [asyncio.create_task(batcher.submit(i)) for i in range(3, 8)]
        return await asyncio.gather(*burst, *later)

    assert asyncio.run(go()) == [i * 10 for i in range(8)]
    assert sizes == [3, 4, 1]


def test_an_error_reaches_every_caller_of_its_batch_and_the_worker_goes_on():
    sizes = []

    async def go():
        batcher = _batcher(sizes, fail_on=2)
        results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        return await batcher.submit(5)

    assert asyncio.run(go()) == 50


def test_a_cancelled_caller_is_left_out():
    sizes = []

    async def go():
        batcher = _batcher(sizes)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.02)
        doomed = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.001)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await first, await kept

    assert asyncio.run(go()) == (0, 20)
    assert sizes == [1, 1]
