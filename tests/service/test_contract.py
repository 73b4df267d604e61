"""The OpenAPI document is a contract: schemathesis fuzzes every operation of a real server
(`python -m service serve`, SQLite control plane and tenant, a logged-in owner) and fails on
any status code an operation does not declare, any 5xx, and any answer whose body or content
type does not match what the document says. Time-bounded: a few dozen cases per operation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.mongo_server import MongoServer
from tests.support import FAST_ARGON2, Spawned, free_port, process_env, run_service_cli

EXAMPLES_PER_OPERATION = 30
OWNER_EMAIL = "owner@contract.example.com"
OWNER_PASSWORD = "contract owner passphrase"
TENANT = "contract"


@dataclass(frozen=True)
class ContractServer:
    base_url: str
    headers: dict[str, str]


def _wait_live(base_url: str, server: Spawned) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.running(), server.describe()
        try:
            if httpx.get(f"{base_url}/api/v1/health/live", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"not live: {server.describe()}")


@pytest.fixture(scope="module")
def contract_server(
    tmp_path_factory: pytest.TempPathFactory, mongo_server: MongoServer
) -> Iterator[ContractServer]:
    workdir = tmp_path_factory.mktemp("contract")
    port = free_port()
    env = process_env(
        BERTH_ENVIRONMENT="test",
        # Submissions on the real test server, so their real paths are fuzzed, not a 503.
        BERTH_MONGO__URL=mongo_server.url,
        BERTH_MONGO__DATABASE_PREFIX=f"contract{port}_",
        BERTH_HTTP__PORT=str(port),
        BERTH_OBSERVABILITY__LOG_FORMAT="json",
        BERTH_OBSERVABILITY__LOG_LEVEL="WARNING",
        BERTH_RATE_LIMITS__ENABLED="false",
        BERTH_ADMIN_PASSWORD=OWNER_PASSWORD,
        **{f"BERTH_AUTH__{key.upper()}": str(value) for key, value in FAST_ARGON2.items()},
    )
    run_service_cli(["migrate"], env, workdir)
    run_service_cli(["tenants", "create", TENANT, "--self-signup"], env, workdir)
    run_service_cli(
        ["users", "create-admin", "--email", OWNER_EMAIL, "--tenant", TENANT], env, workdir
    )
    server = Spawned(
        [sys.executable, "-m", "service", "serve"], env=env, cwd=workdir, name="contract"
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_live(base_url, server)
        login = httpx.post(
            f"{base_url}/api/v1/auth/login",
            json={"email": OWNER_EMAIL, "password": OWNER_PASSWORD},
        )
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        article = {"title": "A contract", "slug": "a-contract", "tags": ["x"]}
        httpx.post(f"{base_url}/api/v1/articles", json=article, headers=headers)
        yield ContractServer(base_url, headers)
    finally:
        server.kill()


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def operations(server: ContractServer) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def fuzzer(
    operation: schemathesis.APIOperation,
    base_url: str,
    headers: dict[str, str] | None,
    sent: list[str],
) -> Callable[[], None]:
    """A hypothesis test of one operation: cases that fit its schema and cases that do not,
    sent to the server and checked; `sent` counts them."""
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case: schemathesis.Case) -> None:
        sent.append(case.operation.label)
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

    return fuzz


def test_every_operation_answers_only_what_it_declares(contract_server: ContractServer) -> None:
    """Each operation in turn, its own failures collected, so one run names them all.
    (schemathesis' own pytest parametrization does not run on this pytest.)"""
    failures: dict[str, str] = {}
    tried: list[str] = []
    sent: list[str] = []
    for operation in operations(contract_server):
        # logout and logout-all would end the session the other operations use.
        keep_session = not operation.path.startswith("/api/v1/auth/logout")
        headers = contract_server.headers if keep_session else None
        tried.append(operation.label)
        try:
            fuzzer(operation, contract_server.base_url, headers, sent)()
        except Exception as exc:  # a failed check: collected, the next operation goes on
            failures[operation.label] = str(exc)[:3000]

    assert len(tried) >= 15, tried
    assert len(sent) >= 10 * len(tried), len(sent)  # a real run, not a vacuous one
    assert failures == {}, "\n\n".join(f"{label}:\n{why}" for label, why in failures.items())
