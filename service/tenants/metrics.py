"""The tenants feature's metrics: its names, declared once (the rule: `service/core/metrics.py`).

Registered into the app's registry (`Core.metrics.registry`) when the container is built.
They are aggregates on purpose: a label per tenant would grow without bound with the tenants.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.tenants.schemas import TenantEntry, TenantStatus

TENANT_ENGINES_OPEN = "berth_tenant_engines_open"
TENANT_CONNECTIONS_CHECKED_OUT = "berth_tenant_connections_checked_out"
# prometheus_client adds `_total` to counters; this is the name as scraped.
TENANT_ENGINE_EVICTIONS = "berth_tenant_engine_evictions_total"
TENANT_REGISTRY_ENTRIES = "berth_tenant_registry_entries"
TENANT_REGISTRY_INVALID = "berth_tenant_registry_invalid_entries"
TENANT_REQUESTS = "berth_tenant_requests_total"
# The `tenant` label of every tenant not named in `observability.metrics_tenants`.
OTHER_TENANTS = "other"

# Why an engine left the cache: the LRU needed room, it sat idle too long, or the registry
# removed the tenant, stopped serving it or changed its database URL (password rotation).
EVICTION_REASONS = ("capacity", "idle", "registry")


class TenantMetrics:
    def __init__(self, registry: CollectorRegistry, labelled_tenants: Iterable[str] = ()) -> None:
        """`labelled_tenants` get a `tenant` label of their own on the request counter."""
        self.engines_open = Gauge(
            TENANT_ENGINES_OPEN,
            "Tenant engines open (cached, or retired and waiting for their sessions to end).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connections_checked_out = Gauge(
            TENANT_CONNECTIONS_CHECKED_OUT,
            "Connections checked out across all tenant pools.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.evictions = Counter(
            TENANT_ENGINE_EVICTIONS.removesuffix("_total"),
            "Tenant engines disposed, by reason (capacity, idle, registry).",
            ("reason",),
            registry=registry,
        )
        for reason in EVICTION_REASONS:
            self.evictions.labels(reason=reason)  # every series exists from the start, at 0
        self.registry_entries = Gauge(
            TENANT_REGISTRY_ENTRIES,
            "Valid tenant registry entries, by status.",
            ("status",),
            registry=registry,
            multiprocess_mode="livemax",
        )
        requests = Counter(
            TENANT_REQUESTS.removesuffix("_total"),
            "Requests served in a tenant's scope, by tenant (those configured; else other).",
            ("tenant",),
            registry=registry,
        )
        self._other_requests = requests.labels(tenant=OTHER_TENANTS)
        self._tenant_requests = {slug: requests.labels(tenant=slug) for slug in labelled_tenants}
        self.registry_invalid = Gauge(
            TENANT_REGISTRY_INVALID,
            "Registry files skipped as malformed (see the tenant_entry_skipped log event).",
            registry=registry,
            multiprocess_mode="livemax",
        )

    def count_request(self, tenant_slug: str) -> None:
        self._tenant_requests.get(tenant_slug, self._other_requests).inc()

    def observe_registry(self, entries: Iterable[TenantEntry], invalid: int) -> None:
        counts = Tally(entry.status for entry in entries)
        for status in TenantStatus:
            self.registry_entries.labels(status=status.value).set(counts.get(status, 0))
        self.registry_invalid.set(invalid)
