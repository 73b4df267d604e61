"""`python -m service users create-admin` as a real subprocess against real PostgreSQL.

Every run has cwd in a tmp dir (no `.env`), an environment without outside BERTH_* variables
(`process_env`) and no controlling terminal (its own session), so getpass reads stdin.
The accounts it creates are then used to log in through the real app.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from service.cli import main
from service.identity.models import User
from service.tenants.registry import write_entry
from service.tenants.schemas import TenantStatus
from tests.conftest import IdentityAppFactory
from tests.service.identity.helpers import LOGIN, ME, auth, query
from tests.support import FAST_ARGON2, process_env, tenant_entry

PASSWORD = "bootstrap passphrase 1"


def create_admin(
    *args: str,
    database_url: str,
    cwd: Path,
    password: str | None = PASSWORD,
    stdin: str = "",
) -> subprocess.CompletedProcess[str]:
    settings = {
        "BERTH_DATABASE__URL": database_url,
        "BERTH_ENVIRONMENT": "test",
        **{f"BERTH_AUTH__{name.upper()}": str(value) for name, value in FAST_ARGON2.items()},
    }
    if password is not None:
        settings["BERTH_ADMIN_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "service", "users", "create-admin", *args],
        env=process_env(**settings),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        start_new_session=True,  # no controlling terminal: getpass falls back to stdin
    )


async def emails(database_url: str) -> list[str]:
    return [row[0] for row in await query(database_url, select(User.email))]


async def test_creates_a_platform_admin_who_can_log_in(
    pg_database: str, tmp_path: Path, identity_app: IdentityAppFactory
) -> None:
    result = create_admin("--email", " Root@Example.COM ", database_url=pg_database, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("created platform_admin: root@example.com (")
    assert PASSWORD not in result.stdout + result.stderr
    _, client = await identity_app(pg_database)
    login = await client.post(LOGIN, json={"email": "root@example.com", "password": PASSWORD})
    me = await client.get(ME, headers=auth(login.json()["access_token"]))
    assert (me.json()["role"], me.json()["tenant_slug"]) == ("platform_admin", None)


def register_tenant(cwd: Path, slug: str, status: TenantStatus = TenantStatus.READY) -> None:
    """An entry in the registry the command reads (the default `data/tenants` under cwd)."""
    write_entry(cwd / "data" / "tenants", tenant_entry(slug, status=status))


async def test_creates_a_tenant_owner(pg_database: str, tmp_path: Path) -> None:
    register_tenant(tmp_path, "acme")

    result = create_admin(
        "--email", "boss@acme.example", "--tenant", "acme", database_url=pg_database, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("created owner of tenant acme: boss@acme.example (")
    rows = await query(pg_database, select(User.role, User.tenant_slug))
    assert [tuple(row) for row in rows] == [("owner", "acme")]


@pytest.mark.parametrize("registered", [None, TenantStatus.DELETING], ids=["unknown", "deleting"])
async def test_refuses_an_owner_of_a_tenant_that_is_not_in_the_registry_or_leaving_it(
    pg_database: str, tmp_path: Path, registered: TenantStatus | None
) -> None:
    register_tenant(tmp_path, "other")
    if registered is not None:
        register_tenant(tmp_path, "nope", registered)

    result = create_admin(
        "--email", "boss@nope.example", "--tenant", "nope", database_url=pg_database, cwd=tmp_path
    )

    assert result.returncode == 1
    assert result.stderr.startswith("berth: unknown tenant 'nope'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert await emails(pg_database) == []


async def test_without_a_terminal_or_a_password_variable_it_says_so_in_one_line(
    pg_database: str, tmp_path: Path
) -> None:
    """No controlling terminal, nothing on stdin, BERTH_ADMIN_PASSWORD unset: one line
    naming the variable, exit 2, no traceback (it was termios.error or EOFError)."""
    result = create_admin(
        "--email", "early@example.com", database_url=pg_database, cwd=tmp_path, password=None
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "berth: no password: set BERTH_ADMIN_PASSWORD or run on a terminal" in result.stderr
    assert await emails(pg_database) == []


async def test_reads_the_password_from_a_prompt_when_the_variable_is_unset(
    pg_database: str, tmp_path: Path, identity_app: IdentityAppFactory
) -> None:
    result = create_admin(
        "--email",
        "prompted@example.com",
        database_url=pg_database,
        cwd=tmp_path,
        password=None,
        stdin="typed in passphrase\n",
    )

    assert result.returncode == 0, result.stderr
    assert "typed in passphrase" not in result.stdout + result.stderr
    _, client = await identity_app(pg_database)
    login = await client.post(
        LOGIN, json={"email": "prompted@example.com", "password": "typed in passphrase"}
    )
    assert login.status_code == 200


@pytest.mark.parametrize(
    ("args", "password", "message"),
    [
        pytest.param([], "short", "at least 10 characters", id="short-password"),
        pytest.param([], "someone@example.com", "must not be the email", id="password-is-email"),
        pytest.param([], "someone", "must not be the email", id="password-is-local-part"),
        pytest.param(
            ["--role", "owner"], PASSWORD, "--role owner needs --tenant", id="owner-no-tenant"
        ),
        pytest.param(
            ["--tenant", "acme", "--role", "platform_admin"],
            PASSWORD,
            "belongs to no tenant",
            id="platform-admin-with-tenant",
        ),
        pytest.param(["--tenant", "Not A Slug"], PASSWORD, "not a valid tenant slug", id="slug"),
        pytest.param(["--email", "not-an-email"], PASSWORD, "must be an email address", id="email"),
    ],
)
def test_refuses_bad_input_with_exit_2_before_touching_the_database(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    password: str,
    message: str,
) -> None:
    """In process (`service.cli.main`, the function `python -m service` runs): every refusal
    happens before a connection is made, so the SQLite file is never even created."""
    database = tmp_path / "never.db"
    for name in [name for name in os.environ if name.startswith("BERTH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BERTH_DATABASE__URL", f"sqlite+aiosqlite:///{database}")
    monkeypatch.setenv("BERTH_ADMIN_PASSWORD", password)
    monkeypatch.chdir(tmp_path)  # no .env

    code = main(["users", "create-admin", "--email", "someone@example.com", *args])

    assert code == 2
    assert message in capsys.readouterr().err
    assert not database.exists()


def test_there_is_no_password_argument(tmp_path: Path) -> None:
    """A real process: argparse refuses the option (exit 2) instead of taking a password
    that would land in shell history and `ps`."""
    result = create_admin(
        "--email",
        "a@example.com",
        "--password",
        "hunter2hunter2",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'never.db'}",
        cwd=tmp_path,
    )

    assert result.returncode == 2
    assert "unrecognized arguments: --password" in result.stderr
    assert not (tmp_path / "never.db").exists()


async def test_a_taken_email_exits_1(pg_database: str, tmp_path: Path) -> None:
    first = create_admin("--email", "twice@example.com", database_url=pg_database, cwd=tmp_path)
    second = create_admin("--email", "TWICE@example.com", database_url=pg_database, cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 1
    assert "twice@example.com: A user with this email already exists" in second.stderr
    assert await emails(pg_database) == ["twice@example.com"]


async def test_an_unmigrated_database_is_one_line_not_a_traceback(
    empty_pg_database: str, tmp_path: Path
) -> None:
    result = create_admin(
        "--email", "early@example.com", database_url=empty_pg_database, cwd=tmp_path
    )

    assert result.returncode == 1
    assert "is the database migrated?" in result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr
