"""/api/v1/users: role guards and tenant scoping on every route, the create/patch rules,
deactivation, and keyset pagination with opaque cursors (a tampered one is a 400).

Real PostgreSQL (a fresh migrated database per test). Users are inserted through the
service's own code path (tests.support.create_user); bearer tokens come from the app's codec.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from service.identity.models import User
from tests.service.identity.helpers import LOGIN, ME, USERS, Api, query
from tests.support import KnownUser, assert_envelope

PASSWORD = "a decent passphrase"


def new_user(**fields: Any) -> dict[str, Any]:
    body = {"email": f"new-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD}
    body.update(fields)
    return body


async def route_calls(api: Api, target: KnownUser) -> list[tuple[str, str, dict[str, Any]]]:
    """Every users route, called on `target` where it takes a user."""
    return [
        ("GET", USERS, {}),
        ("GET", f"{USERS}/{target.id}", {}),
        ("POST", USERS, {"json": new_user()}),
        ("PATCH", f"{USERS}/{target.id}", {"json": {"is_active": False}}),
        ("DELETE", f"{USERS}/{target.id}", {}),
    ]


# Guards -----------------------------------------------------------------------------------


async def test_every_route_needs_a_token(api: Api) -> None:
    target = await api.user()

    for method, path, kwargs in await route_calls(api, target):
        response = await api.client.request(method, path, **kwargs)
        assert_envelope(response, 401, "Unauthorized", path)
        assert response.headers["www-authenticate"] == "Bearer"


async def test_members_may_not_use_any_route(api: Api) -> None:
    member = await api.user(role="member")
    target = await api.user(role="member")

    for method, path, kwargs in await route_calls(api, target):
        response = await api.client.request(method, path, headers=api.headers(member), **kwargs)
        assert_envelope(response, 403, "Forbidden", path)


async def test_another_tenants_user_is_not_found_on_every_route_that_names_one(api: Api) -> None:
    """Never 403: a tenant admin learns nothing about other tenants' users."""
    admin = await api.user(role="admin", tenant_slug="acme")
    stranger = await api.user(role="member", tenant_slug="globex")

    for method, path, kwargs in (await route_calls(api, stranger))[1:]:
        if method == "POST":
            continue
        response = await api.client.request(method, path, headers=api.headers(admin), **kwargs)
        assert_envelope(response, 404, "NotFound", path)
    [row] = await _is_active(api, stranger)
    assert row is True


async def _is_active(api: Api, user: KnownUser) -> list[bool]:
    rows = await query(api.database_url, select(User.is_active).where(User.id == user.id))
    return [row[0] for row in rows]


async def test_a_platform_admin_is_invisible_to_tenant_admins(api: Api) -> None:
    platform = await api.user(role="platform_admin")
    owner = await api.user(role="owner", tenant_slug="acme")

    response = await api.client.get(f"{USERS}/{platform.id}", headers=api.headers(owner))

    assert_envelope(response, 404, "NotFound", f"{USERS}/{platform.id}")


async def test_listing_is_scoped_to_the_tenant_and_platform_admins_see_all(api: Api) -> None:
    acme_admin = await api.user(role="admin", tenant_slug="acme")
    acme_member = await api.user(role="member", tenant_slug="acme")
    globex = await api.user(role="member", tenant_slug="globex")
    platform = await api.user(role="platform_admin")

    scoped = await api.client.get(USERS, headers=api.headers(acme_admin))
    other_tenant = await api.client.get(
        USERS, params={"tenant": "globex"}, headers=api.headers(acme_admin)
    )
    everyone = await api.client.get(USERS, headers=api.headers(platform))
    one_tenant = await api.client.get(
        USERS, params={"tenant": "globex"}, headers=api.headers(platform)
    )

    assert {u["email"] for u in scoped.json()["items"]} == {acme_admin.email, acme_member.email}
    assert other_tenant.json() == {"items": [], "next_cursor": None, "has_more": False}
    assert {u["email"] for u in everyone.json()["items"]} == {
        acme_admin.email,
        acme_member.email,
        globex.email,
        platform.email,
    }
    assert [u["email"] for u in one_tenant.json()["items"]] == [globex.email]


async def test_get_returns_a_user_of_the_own_tenant_without_secrets(api: Api) -> None:
    owner = await api.user(role="owner")
    member = await api.user(role="member")

    response = await api.client.get(f"{USERS}/{member.id}", headers=api.headers(owner))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "id",
        "email",
        "role",
        "tenant_slug",
        "is_active",
        "created_at",
        "updated_at",
    }
    assert (body["id"], body["role"], body["tenant_slug"]) == (str(member.id), "member", "acme")


async def test_a_malformed_user_id_is_a_422(api: Api) -> None:
    owner = await api.user(role="owner")

    response = await api.client.get(f"{USERS}/not-a-uuid", headers=api.headers(owner))

    assert_envelope(response, 422, "ValidationError", f"{USERS}/not-a-uuid")


# Create -----------------------------------------------------------------------------------


async def test_a_tenant_admin_creates_members_and_admins_in_the_own_tenant(api: Api) -> None:
    admin = await api.user(role="admin", tenant_slug="acme")
    body = new_user(email="  Invited.Person@Example.COM ", role="admin")

    response = await api.client.post(USERS, json=body, headers=api.headers(admin))

    assert response.status_code == 201
    created = response.json()
    assert response.headers["location"] == f"{USERS}/{created['id']}"
    assert created["email"] == "invited.person@example.com"
    assert (created["role"], created["tenant_slug"], created["is_active"]) == (
        "admin",
        "acme",
        True,
    )
    login = await api.client.post(
        LOGIN, json={"email": "invited.person@example.com", "password": PASSWORD}
    )
    assert login.status_code == 200


@pytest.mark.parametrize(
    ("actor_role", "body", "status"),
    [
        pytest.param("admin", {"role": "owner"}, 403, id="admin-creates-owner"),
        pytest.param("admin", {"role": "platform_admin"}, 403, id="admin-creates-platform-admin"),
        pytest.param("owner", {"role": "platform_admin"}, 403, id="owner-creates-platform-admin"),
        pytest.param("admin", {"tenant_slug": "globex"}, 403, id="admin-other-tenant"),
        pytest.param("owner", {"tenant_slug": "globex"}, 403, id="owner-other-tenant"),
        pytest.param("owner", {"role": "owner"}, 201, id="owner-creates-owner"),
        pytest.param("owner", {"tenant_slug": "acme"}, 201, id="owner-names-own-tenant"),
        pytest.param("platform_admin", {"role": "platform_admin"}, 201, id="pa-creates-pa"),
        pytest.param(
            "platform_admin", {"role": "owner", "tenant_slug": "globex"}, 201, id="pa-any-tenant"
        ),
        pytest.param("platform_admin", {"role": "member"}, 422, id="pa-tenant-role-no-tenant"),
        pytest.param(
            "platform_admin",
            {"role": "platform_admin", "tenant_slug": "acme"},
            422,
            id="pa-platform-admin-with-tenant",
        ),
        pytest.param(
            "platform_admin",
            {"role": "member", "tenant_slug": "unknown-co"},
            404,
            id="pa-unknown-tenant",
        ),
        pytest.param("owner", {"role": "root"}, 422, id="unknown-role"),
        pytest.param("owner", {"is_active": False}, 422, id="unknown-field"),
    ],
)
async def test_create_rules(api: Api, actor_role: str, body: dict[str, Any], status: int) -> None:
    actor = await api.user(role=actor_role)
    payload = new_user(**body)

    response = await api.client.post(USERS, json=payload, headers=api.headers(actor))

    assert response.status_code == status, response.text
    created = await _emails(api)
    assert (payload["email"] in created) is (status == 201)


async def _emails(api: Api) -> set[str]:
    return {row[0] for row in await query(api.database_url, select(User.email))}


async def test_an_email_taken_in_the_tenant_is_a_409_whatever_its_case(api: Api) -> None:
    owner = await api.user(role="owner")
    existing = await api.user(role="member")

    response = await api.client.post(
        USERS, json=new_user(email=existing.email.upper()), headers=api.headers(owner)
    )

    assert_envelope(response, 409, "Conflict", USERS)


async def test_an_email_used_in_another_tenant_tells_nothing_and_is_a_new_account(
    api: Api,
) -> None:
    """Emails are unique per tenant: acme's owner invites an address globex already has;
    the answer is the usual 201, and the two accounts are two people's (or one person's two)."""
    outsider = await api.user(role="member", tenant_slug="globex")
    owner = await api.user(role="owner", tenant_slug="acme")

    response = await api.client.post(
        USERS, json=new_user(email=outsider.email), headers=api.headers(owner)
    )

    assert response.status_code == 201, response.text
    assert (response.json()["email"], response.json()["tenant_slug"]) == (outsider.email, "acme")
    rows = await query(
        api.database_url, select(User.tenant_slug).where(User.email == outsider.email)
    )
    assert sorted(row[0] for row in rows) == ["acme", "globex"]


async def test_platform_admins_share_no_email_among_themselves(api: Api) -> None:
    admin = await api.user(role="platform_admin")
    other = await api.user(role="platform_admin")

    response = await api.client.post(
        USERS, json=new_user(email=other.email, role="platform_admin"), headers=api.headers(admin)
    )

    assert_envelope(response, 409, "Conflict", USERS)


# Patch and deactivate ---------------------------------------------------------------------


async def patch(api: Api, actor: KnownUser, target: KnownUser, body: dict[str, Any]) -> Any:
    return await api.client.patch(f"{USERS}/{target.id}", json=body, headers=api.headers(actor))


async def test_patch_changes_only_the_fields_sent(api: Api) -> None:
    owner = await api.user(role="owner")
    target = await api.user(role="admin")

    deactivated = await patch(api, owner, target, {"is_active": False})
    promoted = await patch(api, owner, target, {"role": "owner"})

    assert (deactivated.json()["role"], deactivated.json()["is_active"]) == ("admin", False)
    assert (promoted.json()["role"], promoted.json()["is_active"]) == ("owner", False)
    assert promoted.json()["updated_at"] >= deactivated.json()["updated_at"]


@pytest.mark.parametrize(
    ("actor_role", "target_role", "body", "status"),
    [
        pytest.param("admin", "member", {"role": "admin"}, 200, id="admin-promotes-member"),
        pytest.param("admin", "member", {"role": "owner"}, 403, id="admin-grants-owner"),
        pytest.param("owner", "member", {"role": "owner"}, 200, id="owner-grants-owner"),
        pytest.param("admin", "owner", {"role": "member"}, 403, id="admin-demotes-owner"),
        pytest.param("admin", "owner", {"is_active": False}, 403, id="admin-deactivates-owner"),
        pytest.param("owner", "owner", {"role": "admin"}, 200, id="owner-demotes-owner"),
        pytest.param(
            "platform_admin", "member", {"role": "platform_admin"}, 422, id="tenant-to-platform"
        ),
        pytest.param("platform_admin", "owner", {"role": "member"}, 200, id="pa-demotes-owner"),
        pytest.param("owner", "member", {"role": None}, 422, id="null-role"),
        pytest.param("owner", "member", {"is_active": None}, 422, id="null-is-active"),
        pytest.param("owner", "member", {"email": "x@example.com"}, 422, id="unknown-field"),
        pytest.param("owner", "member", {}, 200, id="empty-patch"),
    ],
)
async def test_patch_rules(
    api: Api, actor_role: str, target_role: str, body: dict[str, Any], status: int
) -> None:
    actor = await api.user(role=actor_role)
    target = await api.user(role=target_role, tenant_slug="acme")

    response = await patch(api, actor, target, body)

    assert response.status_code == status, response.text


@pytest.mark.parametrize("body", [{"role": "member"}, {"is_active": False}])
@pytest.mark.parametrize("role", ["owner", "admin", "platform_admin"])
async def test_nobody_demotes_or_deactivates_themselves(
    api: Api, role: str, body: dict[str, Any]
) -> None:
    actor = await api.user(role=role)

    response = await patch(api, actor, actor, body)
    deleted = await api.client.delete(f"{USERS}/{actor.id}", headers=api.headers(actor))

    assert_envelope(response, 403, "Forbidden", f"{USERS}/{actor.id}")
    assert_envelope(deleted, 403, "Forbidden", f"{USERS}/{actor.id}")
    assert await _is_active(api, actor) == [True]


async def test_setting_the_own_role_to_itself_is_a_harmless_no_op(api: Api) -> None:
    owner = await api.user(role="owner")

    response = await patch(api, owner, owner, {"role": "owner", "is_active": True})

    assert response.status_code == 200
    assert (await api.client.get(ME, headers=api.headers(owner))).status_code == 200


async def test_a_role_change_retires_the_users_current_tokens(api: Api) -> None:
    """Tokens carry the role: after a change the old ones fail and a new login says the new
    role (the principal itself always reads the role from the database)."""
    owner = await api.user(role="owner")
    target = await api.user(role="member")
    before = await api.login(target)

    await patch(api, owner, target, {"role": "admin"})
    old = await api.client.get(ME, headers={"Authorization": f"Bearer {before['access_token']}"})
    refreshed = await api.refresh(before["refresh_token"])

    assert_envelope(old, 401, "Unauthorized", ME)
    assert refreshed.status_code == 200
    me = await api.client.get(
        ME, headers={"Authorization": f"Bearer {refreshed.json()['access_token']}"}
    )
    assert me.json()["role"] == "admin"


async def test_delete_deactivates_and_the_user_is_locked_out(api: Api) -> None:
    admin = await api.user(role="admin")
    target = await api.user(role="member")
    tokens = await api.login(target)

    response = await api.client.delete(f"{USERS}/{target.id}", headers=api.headers(admin))
    login = await api.client.post(LOGIN, json={"email": target.email, "password": target.password})

    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert await _is_active(api, target) == [False]  # deactivated, not deleted
    assert await api.me_status(tokens["access_token"]) == 401
    assert (await api.refresh(tokens["refresh_token"])).status_code == 401
    assert login.status_code == 401
    reactivated = await patch(api, admin, target, {"is_active": True})
    assert reactivated.json()["is_active"] is True
    relogin = await api.client.post(
        LOGIN, json={"email": target.email, "password": target.password}
    )
    assert relogin.status_code == 200


# Pagination -------------------------------------------------------------------------------


async def pages(api: Api, actor: KnownUser, **params: Any) -> list[dict[str, Any]]:
    """Every page of a listing, following next_cursor."""
    collected: list[dict[str, Any]] = []
    cursor = None
    while True:
        query_params = {**params, **({"cursor": cursor} if cursor else {})}
        response = await api.client.get(USERS, params=query_params, headers=api.headers(actor))
        assert response.status_code == 200, response.text
        collected.append(response.json())
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return collected


async def test_keyset_pages_cover_every_user_once_in_creation_order(api: Api) -> None:
    owner = await api.user(role="owner")
    members = [await api.user(role="member") for _ in range(6)]

    result = await pages(api, owner, limit=3)

    assert [len(page["items"]) for page in result] == [3, 3, 1]
    assert [page["has_more"] for page in result] == [True, True, False]
    ids = [item["id"] for page in result for item in page["items"]]
    assert ids == [str(user.id) for user in [owner, *members]]


async def test_filters_by_role_active_state_and_email_fragment(api: Api) -> None:
    owner = await api.user(role="owner", email="boss@acme.example")
    admin = await api.user(role="admin", email="ops_lead@acme.example")
    inactive = await api.user(role="member", email="gone@acme.example", is_active=False)
    await api.user(role="member", email="opsXlead@acme.example")

    async def emails(**params: Any) -> list[str]:
        return [u["email"] for page in await pages(api, owner, **params) for u in page["items"]]

    assert await emails(role="admin") == [admin.email]
    assert await emails(is_active="false") == [inactive.email]
    assert await emails(email="BOSS") == [owner.email]
    assert await emails(email="ops_") == [admin.email]  # "_" is literal, not a wildcard
    assert await emails(email="%") == []


async def test_the_page_size_is_bounded(api: Api) -> None:
    owner = await api.user(role="owner")

    for limit in (0, 101):
        response = await api.client.get(USERS, params={"limit": limit}, headers=api.headers(owner))
        assert_envelope(response, 422, "ValidationError", USERS)


def _flip(text: str, index: int) -> str:
    """`text` with the character at `index` replaced by its neighbour in the alphabet."""
    chars = list(text)
    chars[index] = "B" if chars[index] == "A" else "A"
    return "".join(chars)


def _tampered(cursor: str) -> list[str]:
    payload, mac = cursor.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["i"] = str(uuid.UUID(int=0))
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return [
        f"{forged}.{mac}",  # edited position, old signature
        f"{payload}.{_flip(mac, 3)}",  # signature changed
        f"{payload}.{_flip(mac, -1)}",  # only the unused low bits of the last character
        f"{_flip(payload, 5)}.{mac}",  # payload changed
        "not-a-cursor",
        "!!!.???",
        f"{payload}",
        "e30.AAAA",  # "{}" with a made-up signature
    ]


async def test_a_tampered_or_foreign_cursor_is_a_400_in_the_envelope(api: Api) -> None:
    owner = await api.user(role="owner")
    for _ in range(3):
        await api.user(role="member")
    cursor = (await pages(api, owner, limit=2))[0]["next_cursor"]
    assert cursor is not None

    for bad in _tampered(cursor):
        response = await api.client.get(
            USERS, params={"cursor": bad, "limit": 2}, headers=api.headers(owner)
        )
        body = assert_envelope(response, 400, "BadRequest", USERS)
        assert body["message"] == "The cursor is not valid for this listing"
    other_filters = await api.client.get(
        USERS, params={"cursor": cursor, "role": "member"}, headers=api.headers(owner)
    )
    assert_envelope(other_filters, 400, "BadRequest", USERS)
    other_tenant_admin = await api.user(role="owner", tenant_slug="globex")
    replayed = await api.client.get(
        USERS, params={"cursor": cursor}, headers=api.headers(other_tenant_admin)
    )
    assert_envelope(replayed, 400, "BadRequest", USERS)
