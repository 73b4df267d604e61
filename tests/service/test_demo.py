"""`python -m service seed-demo`: `make run`'s demo tenant and owner, as real subprocesses
(cwd in a tmp dir, so everything lands under its `data/`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import IdentityAppFactory
from tests.service.identity.helpers import LOGIN, ME, auth
from tests.support import FAST_ARGON2, process_env


def seed_demo(cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = process_env(
        BERTH_ENVIRONMENT="local",
        BERTH_OBSERVABILITY__LOG_LEVEL="WARNING",
        **{f"BERTH_AUTH__{name.upper()}": str(value) for name, value in FAST_ARGON2.items()},
    )
    for command in (["migrate"], ["seed-demo", *extra]):
        result = subprocess.run(
            [sys.executable, "-m", "service", *command], env=env, cwd=cwd,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    return result


async def test_seed_demo_creates_the_demo_tenant_and_owner_and_shows_the_password_once(
    tmp_path: Path, identity_app: IdentityAppFactory
) -> None:
    first = seed_demo(tmp_path)
    second = seed_demo(tmp_path)

    password = shown_password(first)
    assert "password:" not in second.stdout
    assert "seed-demo --reset-password" in second.stdout
    assert (tmp_path / "data" / "tenants" / "demo.json").is_file()
    database = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'berth.db'}"
    _, client = await identity_app(database)
    login = await client.post(LOGIN, json={"email": "owner@demo.example.com", "password": password})
    assert login.status_code == 200
    me = await client.get(ME, headers=auth(login.json()["access_token"]))
    assert me.json()["tenant_slug"] == "demo"


def shown_password(result: subprocess.CompletedProcess[str]) -> str:
    [password] = [
        line.split(":", 1)[1].strip() for line in result.stdout.splitlines() if "password:" in line
    ]
    return password


async def test_seed_demo_reset_password_gives_the_owner_a_new_one(
    tmp_path: Path, identity_app: IdentityAppFactory
) -> None:
    first = shown_password(seed_demo(tmp_path))
    second = shown_password(seed_demo(tmp_path, "--reset-password"))

    database = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'berth.db'}"
    _, client = await identity_app(database)
    old = await client.post(LOGIN, json={"email": "owner@demo.example.com", "password": first})
    new = await client.post(LOGIN, json={"email": "owner@demo.example.com", "password": second})
    assert second != first
    assert (old.status_code, new.status_code) == (401, 200)
