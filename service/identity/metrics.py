"""The identity feature's metrics: names declared once (the rule: `service/core/metrics.py`).

No label carries a user, an email or a tenant: outcomes only, so the series stay few.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter

from service.core.metrics import children_by

# prometheus_client adds `_total` to counters; these are the names as scraped.
LOGINS = "berth_logins_total"
TOKEN_REFRESHES = "berth_token_refreshes_total"  # noqa: S105 (a metric name)
REFRESH_TOKEN_REUSE = "berth_refresh_token_reuse_total"  # noqa: S105


class LoginOutcome(StrEnum):
    SUCCESS = "success"
    # A wrong password, an unknown or a deactivated account: the caller gets one 401 for all.
    BAD_PASSWORD = "bad_password"  # noqa: S105 (a label value)
    LOCKED_OUT = "locked_out"  # the per-account limit refused the attempt (429)
    SUSPENDED_TENANT = "suspended_tenant"


class RefreshOutcome(StrEnum):
    SUCCESS = "success"
    # Unknown, expired, revoked or already used (the last also counts as a reuse below).
    REJECTED = "rejected"
    SUSPENDED_TENANT = "suspended_tenant"


class IdentityMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        logins = Counter(
            LOGINS.removesuffix("_total"),
            "Login attempts, by outcome (success, bad_password, locked_out, suspended_tenant).",
            ("outcome",),
            registry=registry,
        )
        refreshes = Counter(
            TOKEN_REFRESHES.removesuffix("_total"),
            "Refresh-token rotations, by outcome (success, rejected, suspended_tenant).",
            ("outcome",),
            registry=registry,
        )
        # Children resolved once; every series exists from the start, at 0.
        self.logins = children_by(logins, "outcome", LoginOutcome)
        self.refreshes = children_by(refreshes, "outcome", RefreshOutcome)
        self.refresh_token_reuse = Counter(
            REFRESH_TOKEN_REUSE.removesuffix("_total"),
            "Used refresh tokens presented again (a copied token): each revoked its family.",
            registry=registry,
        )

    def login(self, outcome: LoginOutcome) -> None:
        self.logins[outcome].inc()

    def refresh(self, outcome: RefreshOutcome) -> None:
        self.refreshes[outcome].inc()
