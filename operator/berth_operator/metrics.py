"""The operator's Prometheus metrics: names defined here once (rules and dashboards import them).

kopf has no metrics of its own. Labels are bounded: a handler name, a result, a phase, a kind
of repair; never a tenant.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from berth_operator.resource import Phase

RECONCILES = "berth_operator_reconciles_total"
RECONCILE_DURATION = "berth_operator_reconcile_duration_seconds"
TENANTS = "berth_operator_tenants"
DRIFT_REPAIRS = "berth_operator_drift_repairs_total"
REGISTRY_WRITE_CONFLICTS = "berth_operator_registry_write_conflicts_total"
LEASE_HELD = "berth_operator_lease_held"

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Handler(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    RESUME = "resume"
    TIMER = "timer"
    DELETE = "delete"


class Result(StrEnum):
    SUCCESS = "success"
    TEMPORARY_ERROR = "temporary_error"
    PERMANENT_ERROR = "permanent_error"


class _TenantsByPhase(Collector):
    """`berth_operator_tenants{phase}` from what the operator last wrote in each status."""

    def __init__(self) -> None:
        self.phases: dict[str, Phase] = {}  # Tenant uid -> phase

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            TENANTS, "Tenants by the phase in their status", labels=["phase"]
        )
        for phase in Phase:
            count = sum(1 for value in self.phases.values() if value is phase)
            family.add_metric([phase.value], count)
        yield family


class OperatorMetrics:
    """One registry per operator (tests build several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # CPU and memory of the operator's process (the same names as the service's).
        ProcessCollector(registry=self.registry)
        self.reconciles = Counter(
            RECONCILES,
            "Handler runs by handler and result",
            ["handler", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            RECONCILE_DURATION,
            "Time a handler run took",
            ["handler"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.drift_repairs = Counter(
            DRIFT_REPAIRS,
            "Things found changed by hand (or dropped) and put back, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.registry_conflicts = Counter(
            REGISTRY_WRITE_CONFLICTS,
            "Registry Secret writes that lost a race (stale resourceVersion, Secret gone); retried",
            registry=self.registry,
        )
        self.lease_held = Gauge(
            LEASE_HELD,
            "1 while this instance holds the single-instance Lease",
            registry=self.registry,
        )
        self._phases = _TenantsByPhase()
        self.registry.register(self._phases)

    def set_phase(self, uid: str, phase: Phase) -> None:
        self._phases.phases[uid] = phase

    def forget(self, uid: str) -> None:
        self._phases.phases.pop(uid, None)
