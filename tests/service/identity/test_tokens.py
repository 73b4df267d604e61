"""Access tokens: HS256, EdDSA and RS256 (keys generated here with `cryptography`), the claim
set, and every way a token must be refused: `alg: none`, algorithm confusion, wrong audience
or issuer, expiry, a missing claim, a bad signature. Bad key configuration refuses the start.

Real PostgreSQL (a fresh migrated database per test); tokens checked with PyJWT independently.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.container import container_of
from service.core.config import AuthSettings, ConfigError, Settings
from service.identity.tokens import InvalidToken, TokenCodec
from service.main import create_app
from tests.conftest import IdentityAppFactory
from tests.service.identity.helpers import ME, Api, auth, forge, write_key_pair
from tests.support import KnownUser, assert_envelope

SECRET = "s" * 48
CLAIMS = {"iss", "aud", "sub", "tid", "role", "jti", "iat", "exp", "ver", "fam"}


async def key_api(
    identity_app: IdentityAppFactory, database_url: str, tmp_path: Path, algorithm: str
) -> tuple[Api, Any]:
    """An app signing with `algorithm`, and the key that verifies its tokens."""
    if algorithm == "HS256":
        app, client = await identity_app(database_url, auth={"jwt_secret": SECRET})
        return Api(app, client, database_url), SECRET
    private, public = write_key_pair(tmp_path, algorithm)
    settings = {
        "jwt_algorithm": algorithm,
        "jwt_private_key_file": str(private),
        "jwt_public_key_file": str(public),
    }
    app, client = await identity_app(database_url, auth=settings)
    return Api(app, client, database_url), serialization.load_pem_public_key(public.read_bytes())


def good_claims(user: KnownUser, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "berth",
        "aud": "berth-api",
        "sub": str(user.id),
        "tid": user.tenant_slug,
        "role": user.role,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 300,
        "ver": 0,
        "fam": uuid.uuid4().hex,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not ...}


def assert_refused(response: Any) -> None:
    assert_envelope(response, 401, "Unauthorized", ME)
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("algorithm", ["HS256", "EdDSA", "RS256"])
async def test_each_algorithm_signs_tokens_that_carry_the_documented_claims(
    identity_app: IdentityAppFactory, pg_database: str, tmp_path: Path, algorithm: str
) -> None:
    api, verifying_key = await key_api(identity_app, pg_database, tmp_path, algorithm)
    user = await api.user(role="admin", tenant_slug="acme")

    tokens = await api.login(user)
    access = tokens["access_token"]
    claims = jwt.decode(access, verifying_key, algorithms=[algorithm], audience="berth-api")

    assert jwt.get_unverified_header(access)["alg"] == algorithm
    assert set(claims) == CLAIMS
    assert claims["iss"] == "berth"
    assert claims["sub"] == str(user.id)
    assert (claims["tid"], claims["role"], claims["ver"]) == ("acme", "admin", 0)
    assert claims["exp"] - claims["iat"] == 900
    assert tokens["expires_in"] == 900
    assert tokens["token_type"] == "bearer"
    assert (await api.client.get(ME, headers=auth(access))).json()["email"] == user.email


async def test_a_platform_admin_token_has_a_null_tenant(api: Api) -> None:
    admin = await api.user(role="platform_admin")

    access = (await api.login(admin))["access_token"]

    assert jwt.decode(access, options={"verify_signature": False})["tid"] is None
    assert await api.me_status(access) == 200


async def test_alg_none_is_refused(api: Api) -> None:
    user = await api.user()
    token = forge({"alg": "none", "typ": "JWT"}, good_claims(user), signature_key=None)

    assert_refused(await api.client.get(ME, headers=auth(token)))


async def test_an_hs256_token_signed_with_the_rs256_public_key_is_refused(
    identity_app: IdentityAppFactory, pg_database: str, tmp_path: Path
) -> None:
    """The classic confusion: the public key (which anyone may have) used as an HMAC secret."""
    api, _ = await key_api(identity_app, pg_database, tmp_path, "RS256")
    user = await api.user()
    public_pem = (tmp_path / "RS256-public.pem").read_bytes()
    token = forge({"alg": "HS256", "typ": "JWT"}, good_claims(user), signature_key=public_pem)

    assert_refused(await api.client.get(ME, headers=auth(token)))


async def test_an_rs256_token_is_refused_by_an_hs256_service(api: Api) -> None:
    user = await api.user()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(good_claims(user), key, algorithm="RS256")

    assert_refused(await api.client.get(ME, headers=auth(token)))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"aud": "someone-else"}, id="wrong-audience"),
        pytest.param({"iss": "evil"}, id="wrong-issuer"),
        pytest.param({"exp": int(time.time()) - 60}, id="expired"),
        pytest.param({"ver": ...}, id="missing-ver"),
        pytest.param({"fam": ...}, id="missing-fam"),
        pytest.param({"fam": "not-a-uuid"}, id="malformed-fam"),
        pytest.param({"jti": ...}, id="missing-jti"),
        pytest.param({"sub": "not-a-uuid"}, id="malformed-sub"),
        pytest.param({"ver": "0"}, id="string-ver"),
        pytest.param({"sub": str(uuid.uuid4())}, id="unknown-user"),
    ],
)
async def test_tokens_signed_with_the_right_key_but_wrong_claims_are_refused(
    api: Api, changes: dict[str, Any]
) -> None:
    user = await api.user()
    secret = container_of(api.app).settings.auth.jwt_secret.get_secret_value()
    token = jwt.encode(good_claims(user, **changes), secret, algorithm="HS256")

    assert_refused(await api.client.get(ME, headers=auth(token)))


async def test_an_expired_token_from_the_service_itself_is_refused(api: Api) -> None:
    user = await api.user()
    codec: TokenCodec = container_of(api.app).identity.tokens
    past = datetime.now(UTC) - timedelta(seconds=codec.ttl.total_seconds() + 5)
    token = codec.issue(
        user_id=user.id,
        tenant_slug=user.tenant_slug,
        role=user.role,
        token_version=0,
        family_id=uuid.uuid4(),
        now=past,
    )

    assert_refused(await api.client.get(ME, headers=auth(token.token)))


async def test_a_tampered_signature_or_garbage_is_refused(api: Api) -> None:
    user = await api.user()
    access = (await api.login(user))["access_token"]
    header, payload, signature = access.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]

    assert_refused(await api.client.get(ME, headers=auth(f"{header}.{payload}.{flipped}")))
    assert_refused(await api.client.get(ME, headers=auth("not-a-jwt")))


async def test_no_token_is_a_401_that_asks_for_a_bearer_token(api: Api) -> None:
    response = await api.client.get(ME)

    assert_envelope(response, 401, "Unauthorized", ME)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("auth_settings", "variable"),
    [
        pytest.param({"jwt_algorithm": "RS256"}, "JWT_PRIVATE_KEY_FILE", id="no-key-file"),
        pytest.param(
            {"jwt_algorithm": "RS256", "jwt_private_key_file": "/nonexistent/key.pem"},
            "JWT_PRIVATE_KEY_FILE",
            id="unreadable-key-file",
        ),
        pytest.param(
            {"jwt_algorithm": "EdDSA", "pair": "RS256"},
            "JWT_PRIVATE_KEY_FILE",
            id="rsa-key-for-eddsa",
        ),
        pytest.param(
            {"jwt_algorithm": "RS256", "pair": "RS256", "public": "EdDSA"},
            "JWT_PUBLIC_KEY_FILE",
            id="public-key-of-another-pair",
        ),
    ],
)
def test_bad_key_configuration_refuses_to_start_naming_the_variable(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    auth_settings: dict[str, str],
    variable: str,
) -> None:
    """create_app reads and checks the keys, so a bad deployment fails at start."""
    auth_settings = dict(auth_settings)
    if pair := auth_settings.pop("pair", None):
        private, public = write_key_pair(tmp_path, pair)
        auth_settings["jwt_private_key_file"] = str(private)
        auth_settings["jwt_public_key_file"] = str(public)
    if other := auth_settings.pop("public", None):
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        _, public = write_key_pair(other_dir, other)
        auth_settings["jwt_public_key_file"] = str(public)

    with pytest.raises(ConfigError, match=f"BERTH_AUTH__{variable}"):
        create_app(make_settings(auth=auth_settings))


def test_the_public_key_is_derived_when_only_the_private_key_is_configured(
    tmp_path: Path,
) -> None:
    """No database: a codec with only a private key verifies its own tokens."""
    private, _ = write_key_pair(tmp_path, "EdDSA")
    codec = TokenCodec(AuthSettings(jwt_algorithm="EdDSA", jwt_private_key_file=private))
    user_id = uuid.uuid4()

    token = codec.issue(
        user_id=user_id, tenant_slug="acme", role="member", token_version=3, family_id=uuid.uuid4()
    )
    claims = codec.decode(token.token)

    assert (claims.user_id, claims.tenant_slug, claims.token_version) == (user_id, "acme", 3)
    assert claims.token_id == token.token_id


# The verified-token cache: a hit skips the signature check, never the expiry or the key.


def hs256_codec(secret: str = SECRET) -> TokenCodec:
    return TokenCodec(AuthSettings(jwt_secret=secret))


def cache_hits(codec: TokenCodec) -> int:
    """How often `decode` was answered from the verified-token cache (lru_cache's own count)."""
    return int(codec._verified.cache_info().hits)


def reencoded_payload(token: str, **changes: Any) -> str:
    """`token` with claims changed in its payload and the original header and signature."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


def test_a_token_verified_while_valid_is_refused_once_it_has_expired() -> None:
    codec = hs256_codec()
    issued = codec.issue(
        user_id=uuid.uuid4(),
        tenant_slug="acme",
        role="member",
        token_version=0,
        family_id=uuid.uuid4(),
    )
    codec.decode(issued.token)  # verified and cached while valid

    just_before = codec.decode(issued.token, now=issued.expires_at - timedelta(seconds=1))
    with pytest.raises(InvalidToken):
        codec.decode(issued.token, now=issued.expires_at)
    with pytest.raises(InvalidToken):
        codec.decode(issued.token, now=issued.expires_at + timedelta(hours=1))

    assert just_before.token_id == issued.token_id
    assert cache_hits(codec) == 3  # every later decode came from the cache


def test_a_modified_copy_of_a_cached_token_is_refused() -> None:
    codec = hs256_codec()
    issued = codec.issue(
        user_id=uuid.uuid4(),
        tenant_slug="acme",
        role="member",
        token_version=0,
        family_id=uuid.uuid4(),
    )
    original = codec.decode(issued.token)
    header, payload, signature = issued.token.split(".")
    middle = len(signature) // 2  # not the last character, whose low bits base64 ignores
    flipped = "A" if signature[middle] != "A" else "B"
    tampered = {
        "signature": f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}",
        "role": reencoded_payload(issued.token, role="owner"),
        "tenant": reencoded_payload(issued.token, tid="globex"),
        "version": reencoded_payload(issued.token, ver=1),
    }

    for name, token in tampered.items():
        with pytest.raises(InvalidToken):
            codec.decode(token)
        assert token != issued.token, name

    assert codec.decode(issued.token) == original


def test_a_token_cached_by_one_codec_is_refused_by_a_codec_with_another_key() -> None:
    ours, theirs = hs256_codec(), hs256_codec("t" * 48)
    issued = theirs.issue(
        user_id=uuid.uuid4(),
        tenant_slug=None,
        role="member",
        token_version=0,
        family_id=uuid.uuid4(),
    )
    theirs.decode(issued.token)

    with pytest.raises(InvalidToken):
        ours.decode(issued.token)


def test_a_refused_token_is_checked_again_every_time() -> None:
    """Failures are not cached: the same bad token is checked (and refused) on each use."""
    codec = hs256_codec()
    expired = codec.issue(
        user_id=uuid.uuid4(),
        tenant_slug="acme",
        role="member",
        token_version=0,
        family_id=uuid.uuid4(),
        now=datetime.now(UTC) - timedelta(days=1),
    )

    for token in ("not-a-jwt", "not-a-jwt", expired.token):
        with pytest.raises(InvalidToken):
            codec.decode(token)

    info = codec._verified.cache_info()
    assert (info.hits, info.currsize) == (0, 0)
