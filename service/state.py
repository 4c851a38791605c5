"""Objects that live as long as the application: registry, batchers, executor."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from service import metrics
from service.batching import BatcherPool
from service.config import Settings
from service.registry import ModelRegistry, StoreSnapshot

logger = logging.getLogger(__name__)


@dataclass
class ServiceState:
    """Everything the routes share, built at start-up."""

    settings: Settings
    registry: ModelRegistry
    batchers: BatcherPool
    executor: ThreadPoolExecutor

    async def reload(self) -> StoreSnapshot:
        """Rescan the model store and retire the batchers of replaced models.

        The registry swaps its snapshot and `sync` retires old batchers without
        awaiting in between, so no request can queue on a retired batcher.
        Retired batchers still explain what they had queued.
        """
        snapshot = await self.registry.reload()
        await self.batchers.sync(snapshot.models)
        metrics.register_classes(snapshot.models)
        metrics.MODELS_LOADED.set(len(snapshot.models))
        metrics.MODELS_FAILED.set(len(snapshot.failed))
        return snapshot
