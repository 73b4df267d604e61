"""Helpers for the identity tests (auth and users): an app handle, DB reads, key files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fastapi import FastAPI
from sqlalchemy import Executable
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import KnownUser, bearer, create_user

API = "/api/v1"
LOGIN = f"{API}/auth/login"
TOKEN = f"{API}/auth/token"
REFRESH = f"{API}/auth/refresh"
LOGOUT = f"{API}/auth/logout"
LOGOUT_ALL = f"{API}/auth/logout-all"
ME = f"{API}/auth/me"
REGISTER = f"{API}/auth/register"
USERS = f"{API}/users"


def auth(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


@dataclass
class Api:
    """A started app, a client for it and the database it uses."""

    app: FastAPI
    client: httpx.AsyncClient
    database_url: str

    async def user(self, **fields: Any) -> KnownUser:
        return await create_user(self.app, **fields)

    def headers(self, user: KnownUser, *, token_version: int = 0) -> dict[str, str]:
        return bearer(self.app, user, token_version=token_version)

    async def login(self, user: KnownUser) -> dict[str, Any]:
        response = await self.client.post(
            LOGIN, json={"email": user.email, "password": user.password}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def me_status(self, access_token: str) -> int:
        return (await self.client.get(ME, headers=auth(access_token))).status_code

    async def refresh(self, refresh_token: str) -> httpx.Response:
        return await self.client.post(REFRESH, json={"refresh_token": refresh_token})


async def query(url: str, statement: Executable) -> list[Any]:
    """Rows of `statement`, read through a connection of its own (what is committed)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(statement)).all())
    finally:
        await engine.dispose()


async def execute(url: str, statement: Executable) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(statement)
    finally:
        await engine.dispose()


def write_key_pair(directory: Path, algorithm: str) -> tuple[Path, Path]:
    """A fresh private/public PEM pair for EdDSA (Ed25519) or RS256 (RSA 2048)."""
    private_key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if algorithm == "EdDSA":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / f"{algorithm}-private.pem"
    public = directory / f"{algorithm}-public.pem"
    private.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], signature_key: bytes | None) -> str:
    """A JWT assembled by hand, as an attacker would: HS256 over `signature_key`, or no
    signature at all when it is None (for `alg: none`)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if signature_key is None:
        return f"{signing_input}."
    mac = hmac.new(signature_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"
