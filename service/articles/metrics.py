"""The articles feature's metrics: names declared once (the rule: `service/core/metrics.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter

from service.core.metrics import children_by

# prometheus_client adds `_total` to counters; this is the name as scraped.
ARTICLE_WRITES = "berth_article_writes_total"


class ArticleOperation(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class ArticleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        writes = Counter(
            ARTICLE_WRITES.removesuffix("_total"),
            "Article writes committed, by operation (create, update, delete).",
            ("operation",),
            registry=registry,
        )
        self._writes = children_by(writes, "operation", ArticleOperation)

    def committed(self, operation: ArticleOperation) -> Callable[[], Awaitable[None]]:
        """An `after_commit` hook counting one write: a rolled-back write is not counted."""
        counter = self._writes[operation]

        async def count() -> None:
            counter.inc()

        return count
