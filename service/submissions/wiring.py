"""The submissions part of the app's container: the service and this replica's worker."""

from __future__ import annotations

from dataclasses import dataclass

from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.pagination import CursorSigner
from service.core.slots import AppSlot
from service.submissions.metrics import SubmissionMetrics
from service.submissions.service import SubmissionService
from service.submissions.worker import SubmissionWorker
from service.tenants.wiring import Tenancy

SUBMISSIONS_CURSOR_KIND = "submissions"


@dataclass(frozen=True)
class Submissions:
    """Built once per app; `start` runs the worker (when enabled), `stop` drains it."""

    service: SubmissionService
    worker: SubmissionWorker | None
    shutdown_grace_seconds: float

    def start(self) -> None:
        if self.worker is not None:
            self.worker.start()

    async def stop(self) -> None:
        """Before the pools close: what the worker holds is finished or handed back."""
        if self.worker is not None:
            await self.worker.stop(self.shutdown_grace_seconds)


def build_submissions(settings: Settings, tenancy: Tenancy, metrics: Metrics) -> Submissions:
    feature = settings.submissions
    submission_metrics = SubmissionMetrics(metrics.registry)
    worker = None
    if feature.enabled and feature.worker_enabled:
        worker = SubmissionWorker(
            feature,
            tenancy.registry,
            tenancy.documents,
            submission_metrics,
            metrics_tenants=settings.observability.metrics_tenants,
        )
    cursors = CursorSigner(
        settings.pagination.cursor_secret.get_secret_value().encode(), SUBMISSIONS_CURSOR_KIND
    )
    service = SubmissionService(
        cursors,
        submission_metrics,
        idempotency_ttl_seconds=feature.idempotency_ttl_seconds,
        stats_window_days=feature.stats_window_days,
        on_new_work=worker.wake if worker is not None else lambda: None,
    )
    # A held submission gets at most half the lease to finish, so it is settled before the
    # lease could pass to another replica.
    grace = min(settings.http.graceful_shutdown_seconds, feature.lease_seconds / 2)
    return Submissions(service=service, worker=worker, shutdown_grace_seconds=grace)


SUBMISSIONS: AppSlot[Submissions] = AppSlot("submissions")
