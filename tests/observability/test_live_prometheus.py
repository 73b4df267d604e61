"""Every dashboard query and every recording rule returns data from a real berth and a real
operator, scraped by a real Prometheus.

What is real (see conftest.py): Debian's Prometheus server, started on a free port with the
repository's static scrape config (targets moved to the test's ports, their namespace and pod
labels kept) and its rule files (each group evaluated every second instead of every 30);
`python -m service serve` on the real PostgreSQL (control plane and a tenant made by the
CLI) and the real Redis, reached through a TCP relay the test cuts once; `python -m
berth_operator` on the real Kubernetes API server, provisioning one Tenant on the real
PostgreSQL. The test drives HTTP traffic (logins that succeed, fail and are rate limited, a
refresh and a refresh-token reuse, article writes and reads, a 404, a 422, a 503 while Redis
is cut), waits until Prometheus has scraped it and evaluated the rules, then asks
/api/v1/query for each query, Grafana's variables substituted (prometheus_support.VARIABLES).
A query that is empty fails the test unless MAY_BE_EMPTY says why it can only be empty here.
"""

from __future__ import annotations

import contextlib
import re
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.observability.conftest import OWNER_EMAIL, Berth, Operator
from tests.observability.prometheus_support import (
    Prometheus,
    dashboard_queries,
    poll,
    recording_rules,
    substituted,
)
from tests.support import TEST_PASSWORD

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# Queries (a panel's title, or the expression itself, or a recorded name) that can only be
# empty in this test, and why: e.g. an alert that must not fire, or a series only
# kube-state-metrics writes (no cluster here). A counter that stays at 0 is no reason: its
# series exists.
MAY_BE_EMPTY: dict[str, str] = {
    "Container restarts": "kube-state-metrics does not run in this test (both dashboards)",
    "Pods ready": "kube-state-metrics does not run in this test",
    "Drift repairs by kind": "nothing is changed by hand, so the drift timer repairs nothing",
    # The gauge has a child per tenant only once a worker has counted a tenant's queue, and
    # this berth has no MongoDB: its worker serves no tenant (the counters and the histogram
    # exist from the start, at 0).
    "Queue depth by tenant": "no MongoDB here: the worker counts no tenant's queue",
    "berth:submission_queue_depth:max": "no MongoDB here: the worker counts no tenant's queue",
    "berth:submission_queue_depth:sum": "no MongoDB here: the worker counts no tenant's queue",
}
SETTLE_SECONDS = 20.0
SCRAPE_SECONDS = 1.0  # the interval prometheus_support.for_test sets
ARTICLES = "/api/v1/articles"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"


async def log_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(LOGIN, json={"email": email, "password": password})


async def logins(client: httpx.AsyncClient) -> dict[str, str]:
    """A success, a bad password, then one account's attempts past its limit (429); the
    owner's bearer header."""
    tokens = (await log_in(client, OWNER_EMAIL, TEST_PASSWORD)).json()
    assert (await log_in(client, OWNER_EMAIL, "wrong password")).status_code == 401
    limited = [await log_in(client, "nobody@live.example.com", "wrong") for _ in range(5)]
    assert [r.status_code for r in limited][-1] == 429
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def refresh_reuse(client: httpx.AsyncClient) -> None:
    """A refresh, then the used-up refresh token presented again: a reuse."""
    refresh_token = (await log_in(client, OWNER_EMAIL, TEST_PASSWORD)).json()["refresh_token"]
    assert (await client.post(REFRESH, json={"refresh_token": refresh_token})).status_code == 200
    assert (await client.post(REFRESH, json={"refresh_token": refresh_token})).status_code == 401


async def articles(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    """Create, read (a cache miss, then a hit), list, update, delete, read what is gone
    (404), and a body the API refuses (422)."""
    created = await client.post(ARTICLES, json={"title": "Live one"}, headers=auth)
    assert created.status_code == 201, created.text
    slug = created.json()["slug"]
    for _ in range(2):
        assert (await client.get(f"{ARTICLES}/{slug}", headers=auth)).status_code == 200
    assert (await client.get(ARTICLES, headers=auth)).status_code == 200
    patched = await client.patch(f"{ARTICLES}/{slug}", json={"body": "changed"}, headers=auth)
    assert patched.status_code == 200, patched.text
    assert (await client.delete(f"{ARTICLES}/{slug}", headers=auth)).status_code == 204
    assert (await client.get(f"{ARTICLES}/{slug}", headers=auth)).status_code == 404
    assert (await client.post(ARTICLES, json={"title": ""}, headers=auth)).status_code == 422


async def redis_outage(client: httpx.AsyncClient, berth: Berth, auth: dict[str, str]) -> None:
    """Redis cut: readiness answers 503, a read and a login meet Redis errors; then back."""
    await berth.redis.stop()
    try:
        assert (await client.get("/api/v1/health/ready")).status_code == 503
        await client.get(ARTICLES, headers=auth)
        await log_in(client, "outage@live.example.com", "wrong")
    finally:
        await berth.redis.start()


async def drive(client: httpx.AsyncClient, berth: Berth) -> None:
    for path in ("/api/v1/health/live", "/api/v1/health/ready", "/api/v1/info", "/nowhere"):
        await client.get(path)
    auth = await logins(client)
    await articles(client, auth)
    await refresh_reuse(client)
    await redis_outage(client, berth, auth)
    assert (await client.get("/api/v1/health/ready")).status_code == 200


async def scraped_twice_since(prometheus: Prometheus, since: float) -> float | None:
    """When both targets have been scraped twice after `since` (a rate needs two samples of
    a series the traffic made): the time of the later last scrape."""
    targets = (await prometheus.targets())["activeTargets"]
    scraped = [parse_time(t["lastScrape"]) for t in targets if t["health"] == "up"]
    if len(targets) < 2 or len(scraped) < len(targets) or min(scraped) < since + SCRAPE_SECONDS:
        return None
    return max(scraped)


async def recorded(prometheus: Prometheus) -> bool:
    """Every recording rule that can have data has written some (the rules' first
    evaluations over new series may come up empty: the recorded series are polled)."""
    for record, expression in recording_rules().items():
        if not may_be_empty(record, expression) and not await prometheus.query(record):
            return False
    return True


def parse_time(stamp: str) -> float:
    """Prometheus's RFC 3339 times (nanoseconds, offset or Z) as Unix seconds."""
    whole, _, rest = stamp.partition(".")
    fraction = re.match(r"\d*", rest)
    assert fraction is not None
    offset = rest[fraction.end() :].replace("Z", "+00:00") or "+00:00"
    return datetime.fromisoformat(whole + offset).timestamp() + float(f"0.{fraction[0] or 0}")


@pytest.fixture(scope="module")
async def scraped(
    prometheus: Prometheus, berth: Berth, operator: Operator, berth_client: httpx.AsyncClient
) -> Prometheus:
    """Prometheus once the traffic is driven, scraped and the rules evaluated over it."""
    await drive(berth_client, berth)
    driven = time.time()
    await poll(lambda: scraped_twice_since(prometheus, driven), "scraped", SETTLE_SECONDS)
    with contextlib.suppress(AssertionError):  # past the deadline the tests say what is empty
        await poll(lambda: recorded(prometheus), "the recording rules' data", SETTLE_SECONDS)
    return prometheus


def may_be_empty(*keys: str) -> bool:
    return any(key in MAY_BE_EMPTY for key in keys)


async def test_every_dashboard_query_returns_a_series(scraped: Prometheus) -> None:
    empty = []
    for query in dashboard_queries():
        if not await scraped.query(substituted(query.expr)):
            empty.append(query)
    unexplained = [q.name for q in empty if not may_be_empty(q.panel, q.expr)]

    assert unexplained == [], "\n".join(unexplained)


async def test_every_recording_rule_returns_a_series(scraped: Prometheus) -> None:
    empty = [
        record
        for record, expression in recording_rules().items()
        if not await scraped.query(expression) and not may_be_empty(record, expression)
    ]

    assert empty == []


async def test_both_targets_are_up_with_their_namespace_pod_and_job(
    scraped: Prometheus,
) -> None:
    up: list[dict[str, Any]] = await scraped.query("up")

    assert {(s["metric"]["job"], s["value"][1]) for s in up} == {
        ("berth", "1"), ("berth-operator", "1"),
    }  # fmt: skip
    assert all(s["metric"]["namespace"] and s["metric"]["pod"] for s in up)


def known_keys() -> set[str]:
    queries = dashboard_queries()
    rules = recording_rules()
    return {q.panel for q in queries} | {q.expr for q in queries} | set(rules) | {*rules.values()}


def test_every_reason_to_be_empty_names_a_query_that_exists() -> None:
    assert set(MAY_BE_EMPTY) - known_keys() == set()
