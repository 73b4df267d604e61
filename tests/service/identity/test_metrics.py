"""Identity's metrics: logins by outcome, refresh rotations by outcome, detected reuse."""

from __future__ import annotations

from service.container import container_of
from service.identity.metrics import LOGINS, REFRESH_TOKEN_REUSE, TOKEN_REFRESHES
from service.identity.metrics import LoginOutcome as Login
from service.identity.metrics import RefreshOutcome as Refresh
from service.tenants.schemas import TenantStatus
from tests.conftest import IdentityAppFactory
from tests.service.identity.helpers import LOGIN, Api
from tests.support import metric_value, set_tenants, tenant_entry


def logins(api: Api, outcome: Login) -> float:
    return metric_value(api.app, LOGINS, outcome=outcome.value)


def refreshes(api: Api, outcome: Refresh) -> float:
    return metric_value(api.app, TOKEN_REFRESHES, outcome=outcome.value)


async def test_every_outcome_series_exists_from_the_start_at_zero(api: Api) -> None:
    """A rate over a series that exists is 0; over one that does not, "no data"."""
    registry = container_of(api.app).core.metrics.registry

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert {sample(LOGINS, outcome=outcome.value) for outcome in Login} == {0.0}
    assert {sample(TOKEN_REFRESHES, outcome=outcome.value) for outcome in Refresh} == {0.0}
    assert sample(REFRESH_TOKEN_REUSE) == 0.0


async def test_logins_are_counted_by_outcome(api: Api) -> None:
    user = await api.user()
    await api.login(user)
    wrong = await api.client.post(LOGIN, json={"email": user.email, "password": "not-it-123!"})
    unknown = await api.client.post(LOGIN, json={"email": "nobody@example.com", "password": "x"})

    assert (wrong.status_code, unknown.status_code) == (401, 401)
    assert logins(api, Login.SUCCESS) == 1
    assert logins(api, Login.BAD_PASSWORD) == 2  # unknown accounts count here too: same 401


async def test_a_login_refused_for_a_suspended_tenant_is_counted_as_such(api: Api) -> None:
    user = await api.user(tenant_slug="acme")
    set_tenants(api.app, tenant_entry("acme", status=TenantStatus.SUSPENDED))

    response = await api.client.post(LOGIN, json={"email": user.email, "password": user.password})

    assert response.status_code == 403
    assert logins(api, Login.SUSPENDED_TENANT) == 1
    assert logins(api, Login.SUCCESS) == 0


async def test_a_login_the_per_account_limit_refuses_counts_as_locked_out(
    identity_app: IdentityAppFactory, pg_database: str
) -> None:
    limits = {"login_per_account": "2/minute", "login_per_ip": "100/minute"}
    app, client = await identity_app(pg_database, rate_limits=limits)
    api = Api(app, client, pg_database)
    user = await api.user()
    body = {"email": user.email, "password": "wrong-password-1"}

    statuses = [(await client.post(LOGIN, json=body)).status_code for _ in range(3)]

    assert statuses == [401, 401, 429]
    assert logins(api, Login.BAD_PASSWORD) == 2
    assert logins(api, Login.LOCKED_OUT) == 1


async def test_refreshes_are_counted_and_a_replay_counts_as_reuse(api: Api) -> None:
    user = await api.user()
    first = await api.login(user)
    await api.refresh(first["refresh_token"])

    replay = await api.refresh(first["refresh_token"])
    unknown = await api.refresh("not-a-token-we-issued")

    assert (replay.status_code, unknown.status_code) == (401, 401)
    assert refreshes(api, Refresh.SUCCESS) == 1
    assert refreshes(api, Refresh.REJECTED) == 2
    assert metric_value(api.app, REFRESH_TOKEN_REUSE) == 1  # the unknown token is no reuse


async def test_a_refresh_refused_for_a_suspended_tenant_is_counted_as_such(api: Api) -> None:
    user = await api.user(tenant_slug="acme")
    tokens = await api.login(user)
    set_tenants(api.app, tenant_entry("acme", status=TenantStatus.SUSPENDED))

    refused = await api.refresh(tokens["refresh_token"])

    assert refused.status_code == 403
    assert refreshes(api, Refresh.SUSPENDED_TENANT) == 1
