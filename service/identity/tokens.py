"""Access tokens (JWT, algorithm pinned by settings) and opaque refresh tokens.

Access token claims: iss, aud, sub (user id), tid (tenant slug or null), role, jti, iat, exp,
ver (the user's token_version: logout-all bumps it and every older token stops working) and
fam (the refresh-token family the token was minted in: a detected replay or a logout ends
every access token of that family at once).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from service.core.config import AuthSettings, ConfigError, env_name

VERIFIED_TOKENS_CACHED = 4096
REQUIRED_CLAIMS = ("iss", "aud", "sub", "role", "jti", "iat", "exp", "ver", "fam")
MIN_RSA_BITS = 2048
REFRESH_TOKEN_BYTES = 32

SigningKey = str | bytes | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
VerifyingKey = str | bytes | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class InvalidToken(Exception):
    """The token is malformed, forged, expired or not meant for us."""


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    tenant_slug: str | None
    role: str
    token_id: str
    token_version: int
    family_id: uuid.UUID
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: str
    expires_at: datetime


def _read_key_file(field: str, path: Path | None) -> bytes:
    if path is None:
        raise ConfigError(f"{env_name('auth', field)}: required by the configured algorithm")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{env_name('auth', field)}: cannot read {path}: {exc}") from None


def _load_private_key(settings: AuthSettings) -> ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey:
    field = "jwt_private_key_file"
    pem = _read_key_file(field, settings.jwt_private_key_file)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{env_name('auth', field)}: not an unencrypted PEM key ({exc})"
        ) from None
    if settings.jwt_algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if settings.jwt_algorithm == "RS256" and isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(f"{env_name('auth', field)}: RSA keys need >= {MIN_RSA_BITS} bits")
        return key
    raise ConfigError(f"{env_name('auth', field)}: not a {settings.jwt_algorithm} private key")


def _public_bytes(key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_key_pair(
    settings: AuthSettings,
) -> tuple[SigningKey, VerifyingKey]:
    private = _load_private_key(settings)
    derived = private.public_key()
    if settings.jwt_public_key_file is None:
        return private, derived
    field = "jwt_public_key_file"
    pem = _read_key_file(field, settings.jwt_public_key_file)
    try:
        public = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{env_name('auth', field)}: not a PEM public key ({exc})") from None
    # A mismatched pair would mint tokens this very service then refuses.
    if not isinstance(public, type(derived)) or _public_bytes(public) != _public_bytes(derived):
        raise ConfigError(f"{env_name('auth', field)}: does not match the private key")
    return private, derived


def _load_keys(settings: AuthSettings) -> tuple[SigningKey, VerifyingKey]:
    if not settings.uses_key_files:
        secret = settings.jwt_secret.get_secret_value().encode()
        return secret, secret
    return _load_key_pair(settings)


class TokenCodec:
    """Signs and verifies access tokens; keys are read once, at application start."""

    def __init__(self, settings: AuthSettings) -> None:
        self.algorithm = settings.jwt_algorithm
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.ttl = timedelta(seconds=settings.access_token_ttl_seconds)
        self._signing_key, self._verifying_key = _load_keys(settings)
        # A client sends its token with every request; verifying it (signature, JSON,
        # claims) cost more than the rest of a cached GET. The token string, signature
        # included, is the key, so only a token verified before can hit; expiry is still
        # checked on every use. Failures are not cached (lru_cache does not keep exceptions).
        self._verified = functools.lru_cache(maxsize=VERIFIED_TOKENS_CACHED)(self._verify)

    def issue(
        self,
        *,
        user_id: uuid.UUID,
        tenant_slug: str | None,
        role: str,
        token_version: int,
        family_id: uuid.UUID,
        now: datetime | None = None,
    ) -> IssuedToken:
        issued_at = (now or datetime.now(UTC)).replace(microsecond=0)
        expires_at = issued_at + self.ttl
        token_id = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "tid": tenant_slug,
            "role": role,
            "jti": token_id,
            "iat": issued_at,
            "exp": expires_at,
            "ver": token_version,
            "fam": family_id.hex,
        }
        token = jwt.encode(claims, self._signing_key, algorithm=self.algorithm)
        return IssuedToken(token=token, token_id=token_id, expires_at=expires_at)

    def decode(self, token: str, now: datetime | None = None) -> AccessClaims:
        """Verified claims; InvalidToken for anything else (wrong alg, key, aud, iss, expired)."""
        claims = self._verified(token)
        if claims.expires_at <= (now or datetime.now(UTC)):
            raise InvalidToken("Signature has expired")
        return claims

    def _verify(self, token: str) -> AccessClaims:
        try:
            # One algorithm only: `none` and HS/RS confusion fail here, before any key use.
            claims = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": list(REQUIRED_CLAIMS)},
            )
            return _access_claims(claims)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise InvalidToken(str(exc)) from exc


def _access_claims(claims: dict[str, Any]) -> AccessClaims:
    tenant = claims.get("tid")
    version = claims["ver"]
    if not isinstance(version, int) or not isinstance(claims["role"], str):
        raise ValueError("malformed ver or role claim")
    if tenant is not None and not isinstance(tenant, str):
        raise ValueError("malformed tid claim")
    return AccessClaims(
        user_id=uuid.UUID(claims["sub"]),
        tenant_slug=tenant,
        role=claims["role"],
        token_id=str(claims["jti"]),
        token_version=version,
        family_id=uuid.UUID(claims["fam"]),
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
    )


def new_refresh_token() -> str:
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def hash_refresh_token(token: str) -> str:
    """What is stored: a leaked table does not yield usable tokens (they are random, so a
    fast hash suffices; no salt needed)."""
    return hashlib.sha256(token.encode()).hexdigest()
