"""/api/v1/auth end to end: login (JSON and OAuth2 form), refresh rotation and replay
detection, logout, logout-all, deactivated users, self sign-up.

Real PostgreSQL (a fresh migrated database per test); the whole flow once more on SQLite.
What the database holds is read back through a connection of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from service.identity.models import RefreshToken, User
from service.identity.tokens import hash_refresh_token
from service.tenants.schemas import TenantStatus
from tests.conftest import IdentityAppFactory
from tests.service.identity.helpers import (
    LOGIN,
    LOGOUT,
    LOGOUT_ALL,
    ME,
    REFRESH,
    REGISTER,
    TOKEN,
    USERS,
    Api,
    auth,
    execute,
    query,
)
from tests.support import assert_envelope, set_tenants
from tests.support import tenant_entry as entry


async def refresh_rows(api: Api, user_id: Any) -> list[Any]:
    statement = select(RefreshToken.family_id, RefreshToken.used_at, RefreshToken.revoked_at)
    return await query(api.database_url, statement.where(RefreshToken.user_id == user_id))


# Login ------------------------------------------------------------------------------------


async def test_json_login_returns_a_working_token_pair(api: Api) -> None:
    user = await api.user(role="owner")

    response = await api.client.post(
        LOGIN, json={"email": f"  {user.email.upper()} ", "password": user.password}
    )

    assert response.status_code == 200
    tokens = response.json()
    assert set(tokens) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "refresh_expires_in",
    }
    me = await api.client.get(ME, headers=auth(tokens["access_token"]))
    assert me.status_code == 200
    assert me.json()["email"] == user.email
    assert me.json()["role"] == "owner"
    assert "password_hash" not in me.json()
    [row] = await refresh_rows(api, user.id)
    assert row.used_at is None
    assert row.revoked_at is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({}, [["body", "email"], ["body", "password"]], id="empty"),
        pytest.param({"email": "a@example.com"}, [["body", "password"]], id="no-password"),
        pytest.param(
            {"email": "a@example.com", "password": "x", "extra": 1},
            [["body", "extra"]],
            id="unknown-field",
        ),
    ],
)
async def test_a_bad_login_body_lists_each_error_once(
    api: Api, body: dict[str, Any], expected: list[list[str]]
) -> None:
    """The body is validated once (it was also validated by the rate-limit dependency,
    which listed every error twice)."""
    response = await api.client.post(LOGIN, json=body)

    errors = assert_envelope(response, 422, "ValidationError", LOGIN)["data"]["errors"]
    assert [error["loc"] for error in errors] == expected


async def test_answers_that_carry_credentials_are_never_stored_by_a_cache(api: Api) -> None:
    """RFC 6749 5.1: token answers (and who the caller is) say no-store, errors included."""
    user = await api.user()
    tokens = await api.login(user)

    answers = [
        await api.client.post(LOGIN, json={"email": user.email, "password": user.password}),
        await api.client.post(LOGIN, json={"email": user.email, "password": "wrong" * 3}),
        await api.client.post(TOKEN, data={"username": user.email, "password": user.password}),
        await api.refresh(tokens["refresh_token"]),
        await api.refresh("not a token"),
        await api.client.get(ME, headers=auth(tokens["access_token"])),
        await api.client.get(ME),
    ]

    assert [a.status_code for a in answers] == [200, 401, 200, 200, 401, 200, 401]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["pragma"] == "no-cache"


async def test_an_email_in_several_tenants_logs_in_with_its_tenant(api: Api) -> None:
    """Emails are unique per tenant. Without `tenant`, an address held in two tenants names
    no one (the usual 401); with it, each account logs into its own tenant."""
    acme = await api.user(tenant_slug="acme", email="both@example.com")
    globex = await api.user(
        tenant_slug="globex", email="both@example.com", password="globex's own pw"
    )

    ambiguous = await api.client.post(LOGIN, json={"email": acme.email, "password": acme.password})
    into_acme = await api.client.post(
        LOGIN, json={"email": acme.email, "password": acme.password, "tenant": "acme"}
    )
    into_globex = await api.client.post(
        TOKEN, data={"username": globex.email, "password": globex.password, "tenant": "globex"}
    )
    wrong_tenant = await api.client.post(
        LOGIN, json={"email": acme.email, "password": acme.password, "tenant": "globex"}
    )

    assert_envelope(ambiguous, 401, "Unauthorized", LOGIN)
    assert ambiguous.json()["message"] == "Invalid email or password"
    assert_envelope(wrong_tenant, 401, "Unauthorized", LOGIN)
    for answer, tenant in ((into_acme, "acme"), (into_globex, "globex")):
        me = await api.client.get(ME, headers=auth(answer.json()["access_token"]))
        assert me.json()["tenant_slug"] == tenant


async def test_without_a_tenant_the_platform_admin_of_an_address_comes_first(api: Api) -> None:
    admin = await api.user(role="platform_admin", email="shared@example.com")
    member = await api.user(tenant_slug="acme", email="shared@example.com", password="member pw 12")

    as_admin = await api.login(admin)
    as_member = await api.client.post(
        LOGIN, json={"email": member.email, "password": member.password, "tenant": "acme"}
    )

    me = await api.client.get(ME, headers=auth(as_admin["access_token"]))
    assert me.json()["role"] == "platform_admin"
    assert as_member.status_code == 200


async def test_the_oauth2_password_form_logs_in_too(api: Api) -> None:
    """What Swagger's Authorize button posts."""
    user = await api.user()

    response = await api.client.post(
        TOKEN, data={"username": user.email.upper(), "password": user.password}
    )

    assert response.status_code == 200
    assert response.json()["token_type"] == "bearer"
    assert await api.me_status(response.json()["access_token"]) == 200


async def test_openapi_declares_the_oauth2_password_flow_on_the_token_url(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()

    schemes = schema["components"]["securitySchemes"]
    [scheme] = [s for s in schemes.values() if s["type"] == "oauth2"]
    assert scheme["flows"]["password"]["tokenUrl"] == TOKEN
    assert schema["paths"][ME]["get"]["security"]


async def test_wrong_password_and_unknown_email_are_the_same_401(api: Api) -> None:
    user = await api.user()

    wrong = await api.client.post(LOGIN, json={"email": user.email, "password": "not-it-at-all"})
    unknown = await api.client.post(
        LOGIN, json={"email": "no-such-user@example.com", "password": "not-it-at-all"}
    )
    form = await api.client.post(TOKEN, data={"username": user.email, "password": "nope-nope!"})

    for response, path in ((wrong, LOGIN), (unknown, LOGIN), (form, TOKEN)):
        body = assert_envelope(response, 401, "Unauthorized", path)
        assert body["message"] == "Invalid email or password"
        assert body["data"] is None
        assert response.headers["www-authenticate"] == "Bearer"
    assert await refresh_rows(api, user.id) == []


async def test_a_deactivated_user_cannot_log_in_nor_use_earlier_tokens(api: Api) -> None:
    user = await api.user()
    tokens = await api.login(user)

    await execute(api.database_url, update(User).where(User.id == user.id).values(is_active=False))
    login = await api.client.post(LOGIN, json={"email": user.email, "password": user.password})
    me = await api.client.get(ME, headers=auth(tokens["access_token"]))
    refreshed = await api.refresh(tokens["refresh_token"])

    assert_envelope(login, 401, "Unauthorized", LOGIN)
    assert login.json()["message"] == "Invalid email or password"
    assert_envelope(me, 401, "Unauthorized", ME)
    assert_envelope(refreshed, 401, "Unauthorized", REFRESH)


# Refresh ----------------------------------------------------------------------------------


async def test_refresh_rotates_the_pair_and_uses_up_the_old_refresh_token(api: Api) -> None:
    user = await api.user()
    first = await api.login(user)

    response = await api.refresh(first["refresh_token"])

    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert await api.me_status(second["access_token"]) == 200
    rows = await refresh_rows(api, user.id)
    assert len(rows) == 2
    assert len({row.family_id for row in rows}) == 1
    assert sorted(row.used_at is None for row in rows) == [False, True]
    stored = await query(api.database_url, select(RefreshToken.token_hash))
    assert first["refresh_token"] not in {row.token_hash for row in stored}
    assert hash_refresh_token(second["refresh_token"]) in {row.token_hash for row in stored}


async def test_replaying_a_used_refresh_token_revokes_its_whole_family(api: Api) -> None:
    """The thief or the owner replays token 1 after token 2 was issued: token 2 (and any
    later one) dies too, while another login's family of the same user lives on."""
    user = await api.user()
    first = await api.login(user)
    other_session = await api.login(user)
    second = (await api.refresh(first["refresh_token"])).json()

    replay = await api.refresh(first["refresh_token"])
    after_replay = await api.refresh(second["refresh_token"])
    other = await api.refresh(other_session["refresh_token"])

    body = assert_envelope(replay, 401, "Unauthorized", REFRESH)
    assert body["message"] == "Invalid or expired refresh token"
    assert replay.headers["www-authenticate"] == "Bearer"
    assert_envelope(after_replay, 401, "Unauthorized", REFRESH)
    assert other.status_code == 200
    rows = await refresh_rows(api, user.id)
    families: dict[Any, list[Any]] = {}
    for row in rows:
        families.setdefault(row.family_id, []).append(row)
    revoked = [fam for fam in families.values() if all(r.revoked_at for r in fam)]
    assert len(revoked) == 1
    assert len(revoked[0]) == 2


async def test_a_replayed_refresh_token_also_ends_every_access_token_of_its_family(
    api: Api,
) -> None:
    """The thief rotated first and holds the newest access token; the owner's replay is
    detected, and from the next request on no access token minted in that family works,
    the thief's included. Another session of the same user is not touched."""
    user = await api.user()
    owner = await api.login(user)
    other_session = await api.login(user)
    thief = (await api.refresh(owner["refresh_token"])).json()
    assert await api.me_status(thief["access_token"]) == 200

    replay = await api.refresh(owner["refresh_token"])

    assert replay.status_code == 401
    assert await api.me_status(thief["access_token"]) == 401
    assert await api.me_status(owner["access_token"]) == 401
    assert await api.me_status(other_session["access_token"]) == 200


async def test_logout_ends_every_access_token_of_the_session(api: Api) -> None:
    """Logging out with the session's refresh token ends the session: the access tokens
    minted before the last rotation stop too, not just the one sent."""
    user = await api.user()
    first = await api.login(user)
    second = (await api.refresh(first["refresh_token"])).json()

    logout = await api.client.post(
        LOGOUT,
        json={"refresh_token": second["refresh_token"]},
        headers=auth(second["access_token"]),
    )

    assert logout.status_code == 200
    assert await api.me_status(first["access_token"]) == 401
    assert await api.me_status(second["access_token"]) == 401


async def test_unknown_and_expired_refresh_tokens_are_refused(api: Api) -> None:
    user = await api.user()
    tokens = await api.login(user)
    past = datetime.now(UTC) - timedelta(seconds=1)
    await execute(
        api.database_url,
        update(RefreshToken).where(RefreshToken.user_id == user.id).values(expires_at=past),
    )

    expired = await api.refresh(tokens["refresh_token"])
    unknown = await api.refresh("made-up-token")

    assert_envelope(expired, 401, "Unauthorized", REFRESH)
    assert_envelope(unknown, 401, "Unauthorized", REFRESH)
    [row] = await refresh_rows(api, user.id)
    assert row.used_at is None  # an expired token is not "used": no family revocation


# Logout -----------------------------------------------------------------------------------


async def test_logout_revokes_this_access_token_and_this_session_only(api: Api) -> None:
    user = await api.user()
    this = await api.login(user)
    other = await api.login(user)

    response = await api.client.post(
        LOGOUT, json={"refresh_token": this["refresh_token"]}, headers=auth(this["access_token"])
    )

    assert response.status_code == 200
    assert response.json() == {"access_token_revoked": True, "refresh_tokens_revoked": 1}
    assert await api.me_status(this["access_token"]) == 401
    assert (await api.refresh(this["refresh_token"])).status_code == 401
    assert await api.me_status(other["access_token"]) == 200
    assert (await api.refresh(other["refresh_token"])).status_code == 200


async def test_logout_ignores_a_refresh_token_of_someone_else(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    alice_tokens, bob_tokens = await api.login(alice), await api.login(bob)

    response = await api.client.post(
        LOGOUT,
        json={"refresh_token": bob_tokens["refresh_token"]},
        headers=auth(alice_tokens["access_token"]),
    )

    assert response.json() == {"access_token_revoked": True, "refresh_tokens_revoked": 0}
    assert (await api.refresh(bob_tokens["refresh_token"])).status_code == 200


async def test_logout_without_a_body_revokes_the_access_token(api: Api) -> None:
    user = await api.user()
    tokens = await api.login(user)

    response = await api.client.post(LOGOUT, headers=auth(tokens["access_token"]))

    assert response.status_code == 200
    assert await api.me_status(tokens["access_token"]) == 401
    assert await api.me_status((await api.login(user))["access_token"]) == 200


async def test_logout_all_ends_every_session_of_the_user(api: Api) -> None:
    user = await api.user()
    someone_else = await api.user()
    sessions = [await api.login(user) for _ in range(3)]
    bystander = await api.login(someone_else)

    response = await api.client.post(LOGOUT_ALL, headers=auth(sessions[0]["access_token"]))

    assert response.status_code == 200
    assert response.json()["refresh_tokens_revoked"] == 3
    for session in sessions:
        assert await api.me_status(session["access_token"]) == 401
        assert (await api.refresh(session["refresh_token"])).status_code == 401
    [version] = await query(api.database_url, select(User.token_version).where(User.id == user.id))
    assert version[0] == 1
    fresh = await api.login(user)
    assert await api.me_status(fresh["access_token"]) == 200
    assert await api.me_status(bystander["access_token"]) == 200


# Suspended tenants ------------------------------------------------------------------------


async def test_users_of_a_suspended_tenant_get_no_new_tokens(api: Api) -> None:
    set_tenants(api.app, entry("acme"))
    user = await api.user(tenant_slug="acme")
    tokens = await api.login(user)
    set_tenants(api.app, entry("acme", status=TenantStatus.SUSPENDED))

    login = await api.client.post(LOGIN, json={"email": user.email, "password": user.password})
    refreshed = await api.refresh(tokens["refresh_token"])

    body = assert_envelope(login, 403, "Forbidden", LOGIN)
    assert body["message"] == "This tenant is suspended"
    assert_envelope(refreshed, 403, "Forbidden", REFRESH)


async def test_a_resumed_tenant_lets_its_users_log_in_again(api: Api) -> None:
    set_tenants(api.app, entry("acme", status=TenantStatus.SUSPENDED))
    user = await api.user(tenant_slug="acme")
    refused = await api.client.post(LOGIN, json={"email": user.email, "password": user.password})
    set_tenants(api.app, entry("acme"))

    assert refused.status_code == 403
    await api.login(user)


async def test_a_suspended_tenant_answers_only_after_the_password_is_checked(api: Api) -> None:
    """A wrong password is the usual 401: the tenant's state is told only to its users."""
    set_tenants(api.app, entry("acme", status=TenantStatus.SUSPENDED))
    user = await api.user(tenant_slug="acme")

    response = await api.client.post(
        LOGIN, json={"email": user.email, "password": "not the password at all"}
    )

    assert_envelope(response, 401, "Unauthorized", LOGIN)


# Register ---------------------------------------------------------------------------------


REGISTRY = (
    entry("open-co", self_signup=True),
    entry("closed-co", self_signup=False),
    entry("new-co", self_signup=True, status=TenantStatus.PROVISIONING),
    entry("gone-co", self_signup=True, status=TenantStatus.SUSPENDED),
)


def signup(tenant: str, email: str = "New.Person@Example.com") -> dict[str, str]:
    return {"tenant": tenant, "email": email, "password": "a fine passphrase"}


async def test_register_creates_a_member_of_an_open_tenant_who_can_log_in(api: Api) -> None:
    set_tenants(api.app, *REGISTRY)

    response = await api.client.post(REGISTER, json=signup("open-co"))

    assert response.status_code == 201
    created = response.json()
    assert response.headers["location"] == f"{USERS}/{created['id']}"
    assert (created["email"], created["role"]) == ("new.person@example.com", "member")
    assert (created["tenant_slug"], created["is_active"]) == ("open-co", True)
    login = await api.client.post(
        LOGIN, json={"email": "new.person@example.com", "password": "a fine passphrase"}
    )
    assert login.status_code == 200


@pytest.mark.parametrize("tenant", ["closed-co", "new-co", "gone-co", "no-such-co"])
async def test_register_answers_one_404_for_closed_unready_and_unknown_tenants(
    api: Api, tenant: str
) -> None:
    set_tenants(api.app, *REGISTRY)

    response = await api.client.post(REGISTER, json=signup(tenant))

    body = assert_envelope(response, 404, "NotFound", REGISTER)
    assert body["message"] == "Sign-up is not available for this tenant"
    assert await query(api.database_url, select(User.id)) == []


async def test_register_with_an_empty_tenant_registry_is_unavailable(api: Api) -> None:
    set_tenants(api.app)

    response = await api.client.post(REGISTER, json=signup("open-co"))

    assert_envelope(response, 404, "NotFound", REGISTER)


async def test_register_refuses_an_email_taken_in_the_tenant_and_a_weak_password(
    api: Api,
) -> None:
    set_tenants(api.app, *REGISTRY)
    existing = await api.user(tenant_slug="open-co")
    elsewhere = await api.user(tenant_slug="acme")

    taken = await api.client.post(REGISTER, json=signup("open-co", existing.email.upper()))
    weak = await api.client.post(
        REGISTER, json={"tenant": "open-co", "email": "x@example.com", "password": "short"}
    )
    new_here = await api.client.post(REGISTER, json=signup("open-co", elsewhere.email))

    assert_envelope(taken, 409, "Conflict", REGISTER)
    assert_envelope(weak, 422, "ValidationError", REGISTER)
    assert new_here.status_code == 201  # acme's user is not open-co's, and acme tells nothing


# The whole flow on SQLite -----------------------------------------------------------------


async def test_the_auth_flow_on_sqlite(
    identity_app: IdentityAppFactory, migrated_sqlite: str
) -> None:
    """Real SQLite file: login, me, rotate, replay, logout, logout-all."""
    app, client = await identity_app(migrated_sqlite)
    api = Api(app, client, migrated_sqlite)
    user = await api.user(role="admin")

    first = await api.login(user)
    me = await api.client.get(ME, headers=auth(first["access_token"]))
    second = (await api.refresh(first["refresh_token"])).json()
    replay = await api.refresh(first["refresh_token"])
    after_replay = await api.refresh(second["refresh_token"])
    third = await api.login(user)
    logout = await api.client.post(
        LOGOUT, json={"refresh_token": third["refresh_token"]}, headers=auth(third["access_token"])
    )
    fourth = await api.login(user)
    logout_all = await api.client.post(LOGOUT_ALL, headers=auth(fourth["access_token"]))

    created_at = datetime.fromisoformat(me.json()["created_at"])
    assert created_at.utcoffset() == timedelta(0)
    assert replay.status_code == after_replay.status_code == 401
    assert logout.status_code == 200
    assert await api.me_status(third["access_token"]) == 401
    assert logout_all.status_code == 200
    assert await api.me_status(fourth["access_token"]) == 401
    assert await api.me_status((await api.login(user))["access_token"]) == 200
