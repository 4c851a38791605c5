"""Micro-batching of model calls."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from service_testing import FLAKY_WIDTH

from service.batching import BatcherPool, MicroBatcher, ModelCallError
from service.registry import ModelRegistry, StoreSnapshot


@pytest.fixture(scope="module")
def loaded(exported_store: Path) -> StoreSnapshot:
    return ModelRegistry(exported_store, torch.device("cpu")).scan()


class RecordingExecutor(ThreadPoolExecutor):
    """A one-thread executor that records the threads its calls ran on."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.threads: list[int] = []

    def submit(self, fn, /, *args, **kwargs):
        def recorded():
            self.threads.append(threading.get_ident())
            return fn(*args, **kwargs)

        return super().submit(recorded)


def gray(width: int, height: int = 20) -> torch.Tensor:
    return torch.full((1, height, width), 100, dtype=torch.uint8)


def test_concurrent_requests_share_a_call(loaded: StoreSnapshot) -> None:
    async def scenario() -> list:
        batcher = MicroBatcher(
            loaded.models["tile"], window_s=0.2, max_batch_size=8, executor=ThreadPoolExecutor(1)
        )
        results = await asyncio.gather(*(batcher.explain(gray(20 + index), 1.0) for index in range(4)))
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert [result.batch_size for result in results] == [4, 4, 4, 4]
    assert [result.heatmap.shape for result in results] == [(20, 20 + index) for index in range(4)]


def test_batch_size_is_capped(loaded: StoreSnapshot) -> None:
    async def scenario() -> list:
        batcher = MicroBatcher(
            loaded.models["tile"], window_s=0.2, max_batch_size=2, executor=ThreadPoolExecutor(1)
        )
        results = await asyncio.gather(*(batcher.explain(gray(20), 1.0) for _ in range(5)))
        await batcher.close()
        return results

    sizes = [result.batch_size for result in asyncio.run(scenario())]
    assert max(sizes) == 2
    assert len(sizes) == 5


def test_model_runs_off_the_event_loop(loaded: StoreSnapshot) -> None:
    executor = RecordingExecutor()

    async def scenario() -> None:
        batcher = MicroBatcher(loaded.models["tile"], window_s=0.0, max_batch_size=4, executor=executor)
        await batcher.explain(gray(20), 1.0)
        await batcher.close()

    asyncio.run(scenario())
    assert len(executor.threads) == 1
    assert executor.threads[0] != threading.get_ident()


def test_failing_image_does_not_fail_its_batch(loaded: StoreSnapshot) -> None:
    async def scenario() -> list:
        batcher = MicroBatcher(
            loaded.models["flaky"], window_s=0.2, max_batch_size=8, executor=ThreadPoolExecutor(1)
        )
        results = await asyncio.gather(
            batcher.explain(gray(20), 1.0),
            batcher.explain(gray(FLAKY_WIDTH), 1.0),
            batcher.explain(gray(30), 1.0),
            return_exceptions=True,
        )
        await batcher.close()
        return results

    first, failed, third = asyncio.run(scenario())
    assert first.heatmap.shape == (20, 20)
    assert isinstance(failed, ModelCallError)
    assert "width 13 is not supported" in str(failed)
    assert third.heatmap.shape == (20, 30)


def test_close_finishes_queued_requests(loaded: StoreSnapshot) -> None:
    async def scenario() -> list:
        batcher = MicroBatcher(
            loaded.models["tile"], window_s=0.05, max_batch_size=2, executor=ThreadPoolExecutor(1)
        )
        pending = [asyncio.ensure_future(batcher.explain(gray(20), 1.0)) for _ in range(5)]
        await asyncio.sleep(0)  # let every request reach the queue
        await batcher.close()
        return [task.result() for task in pending]

    assert len(asyncio.run(scenario())) == 5


def test_pool_retires_replaced_model(loaded: StoreSnapshot, exported_store: Path) -> None:
    reloaded = ModelRegistry(exported_store, torch.device("cpu")).scan()

    async def scenario() -> tuple[MicroBatcher, MicroBatcher]:
        pool = BatcherPool(window_s=0.0, max_batch_size=4, executor=ThreadPoolExecutor(1))
        old = pool.get(loaded.models["tile"])
        in_flight = asyncio.ensure_future(old.explain(gray(20), 1.0))
        await asyncio.sleep(0)
        await pool.sync(reloaded.models)
        assert in_flight.done()
        assert in_flight.result().batch_size == 1
        new = pool.get(reloaded.models["tile"])
        await pool.close()
        return old, new

    old, new = asyncio.run(scenario())
    assert old is not new
    assert new.model is reloaded.models["tile"]
