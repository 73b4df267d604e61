"""The test MongoDB servers are real: data persists, and with --auth users are enforced."""

from __future__ import annotations

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from tests.mongo_server import MongoServer

TENANT_PASSWORD = "tenant-one-password"


def test_the_open_server_stores_documents(mongo_server: MongoServer, mongo_database: str) -> None:
    with MongoClient(mongo_server.url) as client:
        client[mongo_database].things.insert_one({"a": 1})

        assert client[mongo_database].things.count_documents({}) == 1


def test_the_auth_server_confines_a_user_to_its_database(mongo_auth_server: MongoServer) -> None:
    with MongoClient(mongo_auth_server.url) as admin:
        admin["confined_one"].command(
            "createUser", "confined", pwd=TENANT_PASSWORD,
            roles=[{"role": "readWrite", "db": "confined_one"}],
        )  # fmt: skip
        admin["confined_two"].things.insert_one({"b": 2})
    own_url = mongo_auth_server.url_for("confined", TENANT_PASSWORD).replace(
        "/?", "/confined_one?authSource=confined_one&"
    )
    with MongoClient(own_url) as client:
        client["confined_one"].things.insert_one({"a": 1})
        with pytest.raises(OperationFailure):
            client["confined_two"].things.find_one()


def test_the_auth_server_refuses_unknown_users(mongo_auth_server: MongoServer) -> None:
    with (
        MongoClient(mongo_auth_server.url_for("nobody", "wrong")) as client,
        pytest.raises(OperationFailure),
    ):
        client["any"].things.find_one()
