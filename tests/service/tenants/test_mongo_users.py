"""A tenant's MongoDB user on a real MongoDB-protocol server with authentication on
(secantusdb `--auth`): it reads and writes its own database and nothing else, a rotated
password really stops working, a second run changes nothing, drift (roles, password, a
dropped user) is repaired, another owner's database is never adopted or dropped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from service.tenants.mongo_users import (
    MARK_COLLECTION,
    DesiredMongoUser,
    InvalidMongoUrl,
    MongoChange,
    MongoNames,
    MongoUnreachable,
    check_mongo_url,
    drop_mongo,
    ensure_mongo_user,
    mongo_names,
    mongo_password_works,
    tenant_mongo_url,
)
from service.tenants.postgres import Owner, OwnershipConflict, ProvisioningError, new_password
from tests.mongo_server import MongoServer
from tests.service.tenants.conftest import unique_slug

Document = dict[str, object]


def operator_owner() -> Owner:
    return Owner.tenant_resource(str(uuid.uuid4()))


def desired_user(slug: str | None = None, owner: Owner | None = None) -> DesiredMongoUser:
    return DesiredMongoUser(
        names=mongo_names(slug or unique_slug()),
        password=new_password(),
        owner=owner or operator_owner(),
    )


@pytest.fixture
def admin(mongo_auth_server: MongoServer) -> Iterator[MongoClient[Document]]:
    """The root admin's client; every tenant database the test made is dropped after."""
    client: MongoClient[Document] = MongoClient(mongo_auth_server.url)
    before = set(client.list_database_names())
    yield client
    for name in set(client.list_database_names()) - before:
        client[name].command("dropAllUsersFromDatabase")
        client.drop_database(name)
    client.close()


def tenant_client(server: MongoServer, names: MongoNames, password: str) -> MongoClient[Document]:
    return MongoClient(tenant_mongo_url(server.url, names, password), serverSelectionTimeoutMS=5000)


def can_log_in(server: MongoServer, names: MongoNames, password: str) -> bool:
    with tenant_client(server, names, password) as client:
        try:
            client[names.database].command("ping")
        except OperationFailure:
            return False
    return True


def roles_of(admin: MongoClient[Document], names: MongoNames) -> list[object] | None:
    found = admin[names.database].command("usersInfo", names.user)["users"]
    return [(r["role"], r["db"]) for r in found[0]["roles"]] if found else None


async def test_the_user_reads_and_writes_its_own_database_and_not_another_tenants(
    mongo_auth_server: MongoServer, admin: MongoClient[Document]
) -> None:
    ours, theirs = desired_user(), desired_user()
    for desired in (ours, theirs):
        await ensure_mongo_user(mongo_auth_server.url, desired)
    admin[theirs.names.database].secrets.insert_one({"secret": "theirs"})

    with tenant_client(mongo_auth_server, ours.names, ours.password) as client:
        client[ours.names.database].notes.insert_one({"text": "ours"})
        assert client[ours.names.database].notes.find_one({}, {"_id": 0}) == {"text": "ours"}
        with pytest.raises(OperationFailure) as read:
            client[theirs.names.database].secrets.find_one()
        with pytest.raises(OperationFailure) as write:
            client[theirs.names.database].secrets.insert_one({"stolen": True})
        with pytest.raises(OperationFailure):
            client.admin.command("usersInfo", {"forAllDBs": True})

    assert read.value.code == write.value.code == 13  # Unauthorized
    assert roles_of(admin, ours.names) == [("readWrite", ours.names.database)]


async def test_the_url_is_the_admins_server_and_options_with_the_users_quoted_credentials() -> None:
    names = MongoNames(user="berth_acme", database="berth_acme")
    admin_url = (
        "mongodb://root:p%40ss@db-0:27017,db-1:27017/admin?replicaSet=rs0&authSource=admin&tls=true"
    )

    url = tenant_mongo_url(admin_url, names, "a/b@c:d")

    assert url == (
        "mongodb://berth_acme:a%2Fb%40c%3Ad@db-0:27017,db-1:27017/berth_acme"
        "?replicaSet=rs0&tls=true&authSource=berth_acme"
    )
    assert check_mongo_url(url) == url


@pytest.mark.parametrize("url", ["postgresql://root:hunter2@db/postgres", "mongodb://h:port/x"])
def test_an_admin_url_that_is_not_mongodb_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(InvalidMongoUrl) as refused:
        check_mongo_url(url)

    assert "hunter2" not in str(refused.value)
    assert url not in str(refused.value)


@pytest.mark.parametrize("database", ["admin", "local", "config", "a.b", "a b", "x" * 64])
def test_system_and_malformed_database_names_are_refused(database: str) -> None:
    with pytest.raises(ProvisioningError):
        mongo_names("acme", database)


async def test_a_second_run_changes_nothing(
    mongo_auth_server: MongoServer, admin: MongoClient[Document]
) -> None:
    desired = desired_user()

    first = await ensure_mongo_user(mongo_auth_server.url, desired)
    second = await ensure_mongo_user(mongo_auth_server.url, desired)

    assert first.changes == (MongoChange.MONGO_DATABASE_MARKED, MongoChange.MONGO_USER_CREATED)
    assert second.changes == ()
    assert second.url == first.url


async def test_rotation_makes_the_old_password_fail_and_the_new_one_work(
    mongo_auth_server: MongoServer, admin: MongoClient[Document]
) -> None:
    old = desired_user()
    await ensure_mongo_user(mongo_auth_server.url, old)
    new = DesiredMongoUser(names=old.names, password=new_password(), owner=old.owner)

    rotated = await ensure_mongo_user(mongo_auth_server.url, new, rotate=True)

    assert rotated.changes == (MongoChange.MONGO_PASSWORD_ROTATED,)
    assert not can_log_in(mongo_auth_server, old.names, old.password)
    assert can_log_in(mongo_auth_server, new.names, new.password)
    assert not await mongo_password_works(mongo_auth_server.url, old.names, old.password)


async def test_a_password_changed_by_hand_is_set_back(
    mongo_auth_server: MongoServer, admin: MongoClient[Document]
) -> None:
    desired = desired_user()
    await ensure_mongo_user(mongo_auth_server.url, desired)
    admin[desired.names.database].command("updateUser", desired.names.user, pwd="by-hand")

    repaired = await ensure_mongo_user(mongo_auth_server.url, desired)

    assert repaired.changes == (MongoChange.MONGO_PASSWORD_RESET,)
    assert can_log_in(mongo_auth_server, desired.names, desired.password)


async def test_roles_granted_or_revoked_by_hand_are_set_back_to_readwrite_on_its_own_db(
    mongo_auth_server: MongoServer, admin: MongoClient[Document]
) -> None:
    desired = desired_user()
    await ensure_mongo_user(mongo_auth_server.url, desired)
    admin[desired.names.database].command(
        "updateUser",
        desired.names.user,
        roles=[{"role": "read", "db": desired.names.database}, {"role": "read", "db": "admin"}],
    )

    repaired = await ensure_mongo_user(mongo_auth_server.url, desired)

    assert repaired.changes == (MongoChange.MONGO_USER_ROLES_SET,)
    assert roles_of(admin, desired.names) == [("readWrite", desired.names.database)]


async def test_a_user_dropped_by_hand_is_created_again_in_its_marked_database(
    mongo_auth_server: MongoServer, admin: MongoClient[Document]
) -> None:
    desired = desired_user()
    await ensure_mongo_user(mongo_auth_server.url, desired)
    admin[desired.names.database].notes.insert_one({"kept": True})
    admin[desired.names.database].command("dropUser", desired.names.user)

    repaired = await ensure_mongo_user(mongo_auth_server.url, desired)

    assert repaired.changes == (MongoChange.MONGO_USER_CREATED,)
    assert can_log_in(mongo_auth_server, desired.names, desired.password)


async def test_drop_removes_the_user_and_keeps_or_drops_the_data_as_asked(
    mongo_auth_server: MongoServer, admin: MongoClient[Document]
) -> None:
    kept, gone = desired_user(), desired_user()
    for desired in (kept, gone):
        await ensure_mongo_user(mongo_auth_server.url, desired)
        admin[desired.names.database].notes.insert_one({"n": 1})

    user_only = await drop_mongo(mongo_auth_server.url, kept.names, kept.owner, drop_database=False)
    both = await drop_mongo(mongo_auth_server.url, gone.names, gone.owner, drop_database=True)
    again = await drop_mongo(mongo_auth_server.url, gone.names, gone.owner, drop_database=True)

    assert user_only == (f"MongoDB user {kept.names.user}",)
    assert both == (f"MongoDB user {gone.names.user}", f"MongoDB database {gone.names.database}")
    assert again == ()
    assert not can_log_in(mongo_auth_server, kept.names, kept.password)
    assert roles_of(admin, kept.names) is None
    databases = admin.list_database_names()
    assert kept.names.database in databases
    assert gone.names.database not in databases


async def test_another_owners_database_is_neither_adopted_nor_dropped(
    mongo_auth_server: MongoServer, admin: MongoClient[Document]
) -> None:
    first = desired_user()
    await ensure_mongo_user(mongo_auth_server.url, first)
    second = desired_user(first.names.user.removeprefix("berth_"))  # same slug, another Tenant

    with pytest.raises(OwnershipConflict):
        await ensure_mongo_user(mongo_auth_server.url, second)
    with pytest.raises(OwnershipConflict):
        await drop_mongo(mongo_auth_server.url, second.names, second.owner, drop_database=True)

    assert can_log_in(mongo_auth_server, first.names, first.password)
    assert not can_log_in(mongo_auth_server, second.names, second.password)


async def test_an_unmarked_database_holding_data_is_not_adopted_but_the_cli_may(
    mongo_auth_server: MongoServer, admin: MongoClient[Document]
) -> None:
    desired = desired_user()
    admin[desired.names.database].legacy.insert_one({"theirs": True})

    with pytest.raises(OwnershipConflict):
        await ensure_mongo_user(mongo_auth_server.url, desired)
    cli = DesiredMongoUser(
        desired.names, desired.password, Owner(label="cli", adopts_unmarked=True)
    )
    adopted = await ensure_mongo_user(mongo_auth_server.url, cli)

    assert adopted.changes == (MongoChange.MONGO_DATABASE_MARKED, MongoChange.MONGO_USER_CREATED)


async def test_its_own_mark_deleted_by_the_tenant_is_put_back(
    mongo_auth_server: MongoServer, admin: MongoClient[Document]
) -> None:
    """The user may write its whole database, the mark included: only our password proves
    the database is still ours."""
    desired = desired_user()
    await ensure_mongo_user(mongo_auth_server.url, desired)
    with tenant_client(mongo_auth_server, desired.names, desired.password) as client:
        client[desired.names.database].notes.insert_one({"n": 1})
        client[desired.names.database].drop_collection(MARK_COLLECTION)

    repaired = await ensure_mongo_user(mongo_auth_server.url, desired)

    assert repaired.changes == (MongoChange.MONGO_DATABASE_MARKED,)


async def test_an_unreachable_server_is_a_temporary_error_naming_the_host_only() -> None:
    url = "mongodb://root:hunter2@127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=200"

    with pytest.raises(MongoUnreachable) as failed:
        await ensure_mongo_user(url, desired_user())

    assert "127.0.0.1:1" in str(failed.value)
    assert "hunter2" not in str(failed.value)
