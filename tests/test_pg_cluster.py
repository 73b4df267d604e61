"""The throwaway scram-sha-256 cluster really refuses wrong and rotated passwords, and stops."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.pg_cluster import ScramCluster, scram_cluster


class BodyFailed(Exception):
    """Raised inside the context manager to prove the server is stopped anyway."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScramCluster]:
    with scram_cluster(tmp_path_factory.mktemp("scram")) as running:
        yield running


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _assert_gone(port: int, pid: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not _process_alive(pid)


async def _current_user(url: str) -> str:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        user: str = await connection.fetchval("SELECT current_user")
        return user
    finally:
        await connection.close()


async def test_superuser_logs_in_with_its_password_only(cluster: ScramCluster) -> None:
    assert await _current_user(cluster.admin_url) == "postgres"
    wrong = cluster.url("postgres", "not-" + cluster.superuser_password, "postgres")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _current_user(wrong)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(wrong, connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        await psycopg.AsyncConnection.connect(
            f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres", connect_timeout=5
        )
    # The Unix socket is no back door either: pg_hba.conf's local lines want scram too.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(
            host=str(cluster.socket_dir),
            port=cluster.port,
            user="postgres",
            password="wrong",
            dbname="postgres",
            connect_timeout=5,
        )


async def test_stored_passwords_are_scram(cluster: ScramCluster) -> None:
    connection = await asyncpg.connect(cluster.admin_url, timeout=5)
    try:
        stored = await connection.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'"
        )
        rules = await connection.fetch("SELECT DISTINCT auth_method FROM pg_hba_file_rules")
    finally:
        await connection.close()
    assert stored.startswith("SCRAM-SHA-256$")
    assert [rule["auth_method"] for rule in rules] == ["scram-sha-256"]


async def test_rotated_password_is_refused(cluster: ScramCluster) -> None:
    role = f"rotating_{uuid.uuid4().hex[:8]}"
    old, new = "old p@ss:w/rd%'", "new-" + uuid.uuid4().hex
    admin = await asyncpg.connect(cluster.admin_url, timeout=5)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD {_literal(old)}')
        assert await _current_user(cluster.url(role, old, "postgres")) == role

        await admin.execute(f'ALTER ROLE "{role}" PASSWORD {_literal(new)}')
        with pytest.raises(asyncpg.InvalidPasswordError):
            await _current_user(cluster.url(role, old, "postgres"))
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            await psycopg.AsyncConnection.connect(
                cluster.url(role, old, "postgres"), connect_timeout=5
            )
        assert await _current_user(cluster.url(role, new, "postgres")) == role

        # The SQLAlchemy form of the URL carries the new password just as well.
        engine = create_async_engine(cluster.url(role, new, "postgres", "postgresql+asyncpg"))
        try:
            async with engine.connect() as connection:
                assert await connection.scalar(text("SELECT current_user")) == role
        finally:
            await engine.dispose()
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


def test_url_percent_encodes_credentials(cluster: ScramCluster) -> None:
    assert cluster.url("a b", "p@ss:w/rd%", "db/x", driver="postgresql+asyncpg") == (
        f"postgresql+asyncpg://a%20b:p%40ss%3Aw%2Frd%25@127.0.0.1:{cluster.port}/db%2Fx"
    )
    assert cluster.admin_url == (
        f"postgresql://postgres:{cluster.superuser_password}@127.0.0.1:{cluster.port}/postgres"
    )


async def test_server_is_gone_after_exit(tmp_path: Path) -> None:
    with scram_cluster(tmp_path) as running:
        assert await _current_user(running.admin_url) == "postgres"
        port, pid = running.port, running.pid
    _assert_gone(port, pid)
    assert running.log_path.read_text().rstrip().endswith("server stopped")


def test_server_is_stopped_when_the_body_raises(tmp_path: Path) -> None:
    seen: list[ScramCluster] = []

    def body() -> None:
        with scram_cluster(tmp_path) as running:
            seen.append(running)
            raise BodyFailed

    with pytest.raises(BodyFailed):
        body()
    _assert_gone(seen[0].port, seen[0].pid)


def test_failed_start_raises_with_the_log_tail(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match=r"(?s)start failed.*invalid value for parameter"),
        scram_cluster(tmp_path, settings={"shared_buffers": "lots"}),
    ):
        pytest.fail("the body must not run when the server did not start")
