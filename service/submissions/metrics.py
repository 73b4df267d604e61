"""The submissions feature's metrics: names declared once (the rule: `service/core/metrics.py`).

Labels are bounded: content types, outcomes and tenants come from fixed sets (the tenant
label follows `observability.metrics_tenants`, as `berth_tenant_requests_total` does).
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.core.metrics import children_by

# prometheus_client adds `_total` to counters; these are the names as scraped.
SUBMISSIONS_RECEIVED = "berth_submissions_received_total"
SUBMISSIONS_PROCESSED = "berth_submissions_processed_total"
SUBMISSION_PROCESSING_SECONDS = "berth_submission_processing_seconds"
SUBMISSION_QUEUE_DEPTH = "berth_submission_queue_depth"
SUBMISSION_LEASE_EXPIRIES = "berth_submission_lease_expiries_total"

PROCESSING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ContentKind(StrEnum):
    """The body formats a submission arrives in (the `content_type` label)."""

    JSON = "json"
    XML = "xml"


class Outcome(StrEnum):
    """How one processing attempt ended (the `outcome` label)."""

    PROCESSED = "processed"
    RETRIED = "retried"
    FAILED = "failed"
    # The lease was lost (expired and taken by another worker): the result was discarded.
    LOST = "lost"


class SubmissionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        received = Counter(
            SUBMISSIONS_RECEIVED.removesuffix("_total"),
            "Submissions accepted (202, new ones only), by body content type.",
            ("content_type",),
            registry=registry,
        )
        processed = Counter(
            SUBMISSIONS_PROCESSED.removesuffix("_total"),
            "Processing attempts finished by the worker, by outcome.",
            ("outcome",),
            registry=registry,
        )
        self._received = children_by(received, "content_type", ContentKind)
        self._processed = children_by(processed, "outcome", Outcome)
        self.processing_seconds = Histogram(
            SUBMISSION_PROCESSING_SECONDS,
            "Time from a claim to its result being stored, per attempt.",
            buckets=PROCESSING_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            SUBMISSION_QUEUE_DEPTH,
            "Submissions waiting (PENDING) as the worker last counted them, per tenant.",
            ("tenant",),
            registry=registry,
        )
        self.lease_expiries = Counter(
            SUBMISSION_LEASE_EXPIRIES.removesuffix("_total"),
            "Claims whose lease ran out before a result (their worker died or hung): requeued.",
            registry=registry,
        )

    def received(self, kind: ContentKind) -> None:
        self._received[kind].inc()

    def finished(self, outcome: Outcome, seconds: float) -> None:
        self._processed[outcome].inc()
        self.processing_seconds.observe(seconds)
