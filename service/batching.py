"""Per-class micro-batching of explanation requests."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from service import metrics
from service.registry import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Explanation:
    """One image's explanation, moved to the CPU.

    Attributes:
        heatmap: `(height, width)` float32, values in `[0, 1]`.
        mask: `(height, width)` bool.
        score: Anomaly score.
        filter_size: The automatic Gaussian filter size k̂.
        is_anomalous: Whether `score` exceeds the model's threshold.
        queue_seconds: Time between submitting and the start of the model call.
        model_seconds: Duration of the model call that explained this image.
        batch_size: Images explained by that call.
    """

    heatmap: np.ndarray
    mask: np.ndarray
    score: float
    filter_size: int
    is_anomalous: bool
    queue_seconds: float
    model_seconds: float
    batch_size: int


class ModelCallError(RuntimeError):
    """The TorchScript module raised while explaining an image."""


@dataclass
class _Pending:
    image: torch.Tensor
    a: float
    future: asyncio.Future[Explanation]
    submitted: float


class MicroBatcher:
    """Collect requests for one model and explain them in batches.

    The first request of a batch waits at most `window_s` for others, and a
    batch closes early at `max_batch_size`. This batcher awaits each model call
    in `executor` before it starts the next, so requests that arrive during a
    call form the next batch and the event loop never waits on the model.
    """

    def __init__(
        self, model: LoadedModel, *, window_s: float, max_batch_size: int, executor: Executor
    ) -> None:
        self.model = model
        self.window_s = window_s
        self.max_batch_size = max_batch_size
        self.executor = executor
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name=f"batcher-{model.class_name}")

    async def explain(self, image: torch.Tensor, a: float) -> Explanation:
        """Queue one image and wait for its explanation.

        Args:
            image: `(channels, height, width)` uint8 or float tensor on the CPU.
            a: Mask threshold multiplier.

        Raises:
            ModelCallError: The model raised for this image.
        """
        future: asyncio.Future[Explanation] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(image=image, a=a, future=future, submitted=time.perf_counter()))
        return await future

    async def close(self) -> None:
        """Explain what is already queued, then stop the worker."""
        self._queue.put_nowait(None)
        await self._worker

    async def _run(self) -> None:
        closing = False
        while not closing:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.perf_counter() + self.window_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                try:
                    if remaining > 0:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    else:
                        item = self._queue.get_nowait()
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            try:
                await self._explain_batch(batch)
            except Exception as error:  # noqa: BLE001 - the worker must outlive one bad batch
                logger.exception("model %s: batch of %d failed outside the model call", self.model.class_name, len(batch))
                for pending in batch:
                    _set_exception(pending.future, error)

    async def _explain_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self._call_model, batch)
        except Exception as error:  # noqa: BLE001 - the error goes to the requests instead
            if len(batch) == 1:
                _set_exception(batch[0].future, error)
                return
            # One bad image should not fail the others, so retry one by one.
            logger.warning(
                "model %s: batch of %d failed (%s); retrying the images one by one",
                self.model.class_name,
                len(batch),
                error,
            )
            for pending in batch:
                await self._explain_batch([pending])
            return

        model_seconds = time.perf_counter() - started
        name = self.model.class_name
        metrics.MODEL_DURATION.labels(name).observe(model_seconds)
        metrics.BATCH_SIZE.labels(name).observe(len(batch))
        for pending, result in zip(batch, results):
            queue_seconds = started - pending.submitted
            metrics.QUEUE_WAIT.labels(name).observe(queue_seconds)
            if not pending.future.done():
                pending.future.set_result(
                    Explanation(
                        queue_seconds=queue_seconds,
                        model_seconds=model_seconds,
                        batch_size=len(batch),
                        **result,
                    )
                )

    def _call_model(self, batch: list[_Pending]) -> list[dict]:
        """Run `explain_batch` in a worker thread and copy the results to the CPU."""
        device = self.model.device
        images = [pending.image.to(device, non_blocking=True) for pending in batch]
        thresholds = [pending.a for pending in batch]
        try:
            with torch.inference_mode():
                outputs = self.model.module.explain_batch(images, thresholds)
        except Exception as error:  # noqa: BLE001 - TorchScript raises torch.jit.Error and others
            raise ModelCallError(str(error)) from error
        if len(outputs) != len(batch):
            raise ModelCallError(f"explain_batch returned {len(outputs)} results for {len(batch)} images")

        results = []
        for output in outputs:
            results.append(
                {
                    "heatmap": output["heatmap"].detach().float().cpu().numpy(),
                    "mask": output["mask"].detach().bool().cpu().numpy(),
                    "score": float(output["score"]),
                    "filter_size": int(output["filter_size"]),
                    "is_anomalous": bool(output["is_anomalous"]),
                }
            )
        return results


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error if isinstance(error, ModelCallError) else ModelCallError(str(error)))


class BatcherPool:
    """One `MicroBatcher` per loaded model, following registry reloads."""

    def __init__(self, *, window_s: float, max_batch_size: int, executor: Executor) -> None:
        self.window_s = window_s
        self.max_batch_size = max_batch_size
        self.executor = executor
        self._batchers: dict[str, MicroBatcher] = {}
        self._closing: set[asyncio.Task] = set()

    def get(self, model: LoadedModel) -> MicroBatcher:
        """Return the batcher of `model`, creating it on first use.

        Callers look the model up in the registry and call this and
        `MicroBatcher.explain` without awaiting in between, so the model is
        always the registry's current one.
        """
        batcher = self._batchers.get(model.class_name)
        if batcher is not None and batcher.model is model:
            return batcher
        if batcher is not None:
            # Only reachable when a caller awaited between lookup and submit.
            # The old batcher still explains what it has queued.
            task = asyncio.get_running_loop().create_task(batcher.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        batcher = self._create(model)
        self._batchers[model.class_name] = batcher
        return batcher

    def _create(self, model: LoadedModel) -> MicroBatcher:
        return MicroBatcher(
            model, window_s=self.window_s, max_batch_size=self.max_batch_size, executor=self.executor
        )

    async def sync(self, models: dict[str, LoadedModel]) -> None:
        """Retire the batchers whose model was replaced or removed.

        A retired batcher first explains every request already queued, so a
        reload drops none of them.
        """
        retired = [
            batcher
            for name, batcher in self._batchers.items()
            if models.get(name) is not batcher.model
        ]
        for batcher in retired:
            del self._batchers[batcher.model.class_name]
        await asyncio.gather(*(batcher.close() for batcher in retired))

    async def close(self) -> None:
        """Finish the queued requests and stop every batcher."""
        batchers = list(self._batchers.values())
        self._batchers.clear()
        await asyncio.gather(*(batcher.close() for batcher in batchers), *self._closing)
