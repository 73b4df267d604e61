"""Authentication rules: login, token rotation, logout, and turning a token into a Principal.

No FastAPI here. Failures are the domain errors of service.core.errors; every 401 carries
`WWW-Authenticate: Bearer` and the same body whatever the reason, so a caller cannot tell
an unknown email from a wrong password, or a forged token from a revoked one.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import argon2

from service.auth.passwords import Passwords, build_hasher
from service.auth.principal import Principal
from service.auth.repository import RefreshTokenRepository
from service.auth.tokens import (
    AccessClaims,
    InvalidToken,
    TokenCodec,
    hash_refresh_token,
    new_refresh_token,
)
from service.core.config import AuthSettings
from service.core.errors import NotFound, Unauthorized
from service.core.logging import get_logger
from service.core.store import KeyValueStore
from service.tenants.schemas import TenantLookup, TenantStatus
from service.tenants.service import TenantSuspended
from service.users.auth_state import AuthState, AuthStateCache
from service.users.models import Role, User
from service.users.repository import UserRepository
from service.users.service import NewUser, provision_user

log = get_logger(__name__)

BEARER = {"WWW-Authenticate": "Bearer"}
INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
# Key prefixes and messages, not secrets.
REVOKED_TOKEN_PREFIX = "berth:auth:revoked:"  # noqa: S105
BAD_CREDENTIALS = "Invalid email or password"
BAD_TOKEN = "Invalid or expired token"  # noqa: S105
BAD_REFRESH_TOKEN = "Invalid or expired refresh token"  # noqa: S105
SIGNUP_UNAVAILABLE = "Sign-up is not available for this tenant"


@dataclass(frozen=True)
class AuthContext:
    """Built once per application: keys are read and checked at start (ConfigError)."""

    settings: AuthSettings
    codec: TokenCodec
    passwords: Passwords


def build_auth_context(
    settings: AuthSettings, hasher: argon2.PasswordHasher | None = None
) -> AuthContext:
    return AuthContext(
        settings=settings,
        codec=TokenCodec(settings),
        passwords=Passwords(hasher or build_hasher(settings), settings.argon2_max_concurrent),
    )


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


@dataclass(frozen=True)
class LogoutOutcome:
    access_token_revoked: bool
    refresh_tokens_revoked: int


def email_fingerprint(email: str) -> str:
    """Correlates log lines about one account without writing the address itself."""
    return hashlib.sha256(email.encode()).hexdigest()[:16]


def revoked_token_key(token_id: str) -> str:
    return f"{REVOKED_TOKEN_PREFIX}{token_id}"


def _invalid_token() -> Unauthorized:
    return Unauthorized(BAD_TOKEN, headers=INVALID_TOKEN)


def decode_access_token(codec: TokenCodec, token: str) -> AccessClaims:
    """Verified claims, or the 401 every bad token gets."""
    try:
        return codec.decode(token)
    except InvalidToken:
        raise _invalid_token() from None


async def authenticate(
    claims: AccessClaims,
    auth_states: AuthStateCache,
    read_state: Callable[[uuid.UUID], Awaitable[AuthState | None]],
) -> Principal:
    """The principal for verified claims, if the token is still good right now.

    One key-value round trip answers both "was this token logged out" and "what is the
    user's current state"; `read_state` (the control plane) runs only on a cache miss.
    """
    cached = await auth_states.lookup(claims.user_id, revoked_token_key(claims.token_id))
    if cached.other_key_set:  # this very token was logged out
        raise _invalid_token()
    state = cached.state
    if state is None:
        state = await read_state(claims.user_id)
        if state is not None:
            await auth_states.put(claims.user_id, state)
    if state is None or not state.is_active or state.token_version != claims.token_version:
        raise _invalid_token()
    # The row, not the token, decides role and tenant: a change applies at once.
    return Principal(
        user_id=claims.user_id,
        email=state.email,
        role=state.role,
        tenant_slug=state.tenant_slug,
        token_id=claims.token_id,
    )


class AuthService:
    def __init__(
        self,
        context: AuthContext,
        users: UserRepository,
        refresh_tokens: RefreshTokenRepository,
        store: KeyValueStore,
        tenants: TenantLookup | None = None,
    ) -> None:
        self.context = context
        self.tenants = tenants
        self.users = users
        self.refresh_tokens = refresh_tokens
        self.store = store

    async def login(self, email: str, password: str) -> TokenPair:
        user = await self.users.get_by_email(email)
        # Verify even when there is no such user: the same Argon2 work, no timing oracle.
        verification = await self.context.passwords.verify(
            user.password_hash if user else None, password
        )
        if user is None or not verification.valid or not user.is_active:
            log.info("login_failed", account=email_fingerprint(email))
            raise Unauthorized(BAD_CREDENTIALS, headers=BEARER)
        self._ensure_tenant_not_suspended(user)
        if verification.new_hash is not None:
            user.password_hash = verification.new_hash
            log.info("password_rehashed", user_id=str(user.id))
        log.info("login_succeeded", user_id=str(user.id))
        return await self._issue(user, family_id=uuid.uuid4())

    async def refresh(self, token: str, commit: Callable[[], Awaitable[None]]) -> TokenPair:
        """Rotate: the presented token is used up and a new one of the same family issued.

        `commit` persists a family revocation before the 401 that follows it: the request's
        transaction rolls back on any error, and this one write must survive that.
        """
        now = datetime.now(UTC)
        token_hash = hash_refresh_token(token)
        claimed = await self.refresh_tokens.claim(token_hash, now)
        if claimed is None:
            await self._refuse_unusable(token_hash, now, commit)
            raise Unauthorized(BAD_REFRESH_TOKEN, headers=BEARER)
        user = await self.users.get(claimed.user_id)
        if user is None or not user.is_active:
            raise Unauthorized(BAD_REFRESH_TOKEN, headers=BEARER)
        self._ensure_tenant_not_suspended(user)
        return await self._issue(user, family_id=claimed.family_id)

    def _ensure_tenant_not_suspended(self, user: User) -> None:
        """No new tokens for the users of a suspended tenant, told why (they have proved who
        they are). Other states are left to the tenant routes, which answer 404 for them."""
        if user.tenant_slug is None or self.tenants is None:
            return
        entry = self.tenants.get(user.tenant_slug)
        if entry is not None and entry.status is TenantStatus.SUSPENDED:
            log.info("tokens_refused_tenant_suspended", user_id=str(user.id))
            raise TenantSuspended()

    async def _refuse_unusable(
        self, token_hash: str, now: datetime, commit: Callable[[], Awaitable[None]]
    ) -> None:
        record = await self.refresh_tokens.find(token_hash)
        if record is None or not record.used:
            return  # unknown, expired or already revoked: nothing more to do
        # A used token came back: it was copied. Whoever holds the family now is suspect.
        revoked = await self.refresh_tokens.revoke_family(record.family_id, now)
        await commit()
        log.warning(
            "refresh_token_reuse_detected",
            user_id=str(record.user_id),
            family_id=str(record.family_id),
            revoked=revoked,
        )

    async def logout(
        self, principal: Principal, claims: AccessClaims, refresh_token: str | None
    ) -> LogoutOutcome:
        now = datetime.now(UTC)
        # Remembered only until the token would have expired anyway.
        ttl = int((claims.expires_at - now).total_seconds()) + 1
        await self.store.set(revoked_token_key(principal.token_id), b"1", max(1, ttl))
        revoked = 0
        if refresh_token:
            record = await self.refresh_tokens.find(hash_refresh_token(refresh_token))
            # Someone else's token is ignored, without saying so.
            if record is not None and record.user_id == principal.user_id:
                revoked = await self.refresh_tokens.revoke_family(record.family_id, now)
        log.info("logout", user_id=str(principal.user_id), sessions_revoked=revoked)
        return LogoutOutcome(access_token_revoked=True, refresh_tokens_revoked=revoked)

    async def logout_all(self, principal: Principal) -> LogoutOutcome:
        await self.users.bump_token_version(principal.user_id)
        revoked = await self.refresh_tokens.revoke_for_user(principal.user_id, datetime.now(UTC))
        log.info("logout_all", user_id=str(principal.user_id), sessions_revoked=revoked)
        return LogoutOutcome(access_token_revoked=True, refresh_tokens_revoked=revoked)

    async def me(self, principal: Principal) -> User:
        user = await self.users.get(principal.user_id)
        if user is None:  # deleted since authenticate() a moment ago
            raise _invalid_token()
        return user

    async def register(
        self, tenants: TenantLookup | None, *, tenant_slug: str, email: str, password: str
    ) -> User:
        entry = tenants.get(tenant_slug) if tenants is not None else None
        # One answer for unknown, not ready and closed tenants: nothing is disclosed.
        if entry is None or not entry.is_serving or not entry.self_signup:
            raise NotFound(SIGNUP_UNAVAILABLE)
        new = NewUser(email=email, password=password, role=Role.MEMBER, tenant_slug=tenant_slug)
        user = await provision_user(self.users, self.context.passwords, new)
        log.info("user_registered", user_id=str(user.id), tenant=tenant_slug)
        return user

    async def _issue(self, user: User, *, family_id: uuid.UUID) -> TokenPair:
        settings = self.context.settings
        access = self.context.codec.issue(
            user_id=user.id,
            tenant_slug=user.tenant_slug,
            role=user.role,
            token_version=user.token_version,
        )
        refresh = new_refresh_token()
        await self.refresh_tokens.add(
            user_id=user.id,
            family_id=family_id,
            token_hash=hash_refresh_token(refresh),
            expires_at=datetime.now(UTC) + timedelta(seconds=settings.refresh_token_ttl_seconds),
        )
        return TokenPair(
            access_token=access.token,
            expires_in=settings.access_token_ttl_seconds,
            refresh_token=refresh,
            refresh_expires_in=settings.refresh_token_ttl_seconds,
        )
