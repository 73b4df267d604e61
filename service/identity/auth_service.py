"""Authentication rules: login, token rotation, logout, sign-up, and turning a token into a
Principal. No FastAPI here; built once per app, each call handed the request's session.

Failures are the domain errors of service.core.errors; every 401 carries
`WWW-Authenticate: Bearer` and the same body whatever the reason, so a caller cannot tell
an unknown email from a wrong password, or a forged token from a revoked one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from service.core.clock import utc_now
from service.core.config import AuthSettings
from service.core.errors import NotFound, Unauthorized
from service.core.logging import get_logger
from service.core.store import KeyValueStore
from service.core.tenancy import TenantDirectory, TenantSuspended
from service.db.engine import SessionFactories, after_commit, session_scope
from service.identity.auth_state import AuthState, AuthStateCache
from service.identity.emails import email_hash
from service.identity.metrics import IdentityMetrics, LoginOutcome, RefreshOutcome
from service.identity.models import User
from service.identity.passwords import Passwords
from service.identity.principal import Principal, Role
from service.identity.repository import RefreshTokenRepository, UserRepository
from service.identity.tokens import (
    AccessClaims,
    InvalidToken,
    TokenCodec,
    hash_refresh_token,
    new_refresh_token,
)
from service.identity.users_service import NewUser, provision_user

log = get_logger(__name__)

BEARER = {"WWW-Authenticate": "Bearer"}
INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
# Key prefixes and messages, not secrets.
REVOKED_TOKEN_PREFIX = "berth:auth:revoked:"  # noqa: S105
REVOKED_FAMILY_PREFIX = "berth:auth:revoked-family:"
BAD_CREDENTIALS = "Invalid email or password"
BAD_TOKEN = "Invalid or expired token"  # noqa: S105
BAD_REFRESH_TOKEN = "Invalid or expired refresh token"  # noqa: S105
SIGNUP_UNAVAILABLE = "Sign-up is not available for this tenant"


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


def revoked_token_key(token_id: str) -> str:
    return f"{REVOKED_TOKEN_PREFIX}{token_id}"


def revoked_family_key(family_id: uuid.UUID) -> str:
    return f"{REVOKED_FAMILY_PREFIX}{family_id.hex}"


def _invalid_token() -> Unauthorized:
    return Unauthorized(BAD_TOKEN, headers=INVALID_TOKEN)


def _matches(claims: AccessClaims, state: AuthState) -> bool:
    """Whether the token still speaks for the user's row: active, same token version, and
    the tenant and role it was signed with are the row's (the row decides; a token that
    says otherwise was not minted from it, or predates a change)."""
    return (
        state.is_active
        and state.token_version == claims.token_version
        and state.tenant_slug == claims.tenant_slug
        and state.role.value == claims.role
    )


class AuthService:
    def __init__(
        self,
        settings: AuthSettings,
        *,
        tokens: TokenCodec,
        passwords: Passwords,
        auth_states: AuthStateCache,
        store: KeyValueStore,
        control_plane: SessionFactories,
        tenants: TenantDirectory,
        metrics: IdentityMetrics,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tokens = tokens
        self.passwords = passwords
        self.auth_states = auth_states
        self.store = store
        self.control_plane = control_plane
        self.tenants = tenants

    # -- every authenticated request -------------------------------------------------------

    def verify(self, token: str) -> AccessClaims:
        """Verified claims, or the 401 every bad token gets."""
        try:
            return self.tokens.decode(token)
        except InvalidToken:
            raise _invalid_token() from None

    async def authenticate(self, claims: AccessClaims) -> Principal:
        """The principal for verified claims, if the token is still good right now.

        One key-value round trip answers "was this token, or its whole family, revoked" and
        "what is the user's current state"; the control plane is read only on a cache miss,
        in a short read-only session of its own (no session per request).
        """
        cached = await self.auth_states.lookup(
            claims.user_id, revoked_token_key(claims.token_id), revoked_family_key(claims.family_id)
        )
        if cached.other_key_set:  # logged out, or its family ended (a replay, a logout)
            raise _invalid_token()
        state = cached.state
        if state is None:
            state = await self._read_state(claims.user_id)
            if state is not None:
                await self.auth_states.put(claims.user_id, state)
        if state is None or not _matches(claims, state):
            raise _invalid_token()
        return Principal(
            user_id=claims.user_id,
            email=state.email,
            role=state.role,
            tenant_slug=state.tenant_slug,
            token_id=claims.token_id,
        )

    async def _read_state(self, user_id: uuid.UUID) -> AuthState | None:
        async with session_scope(self.control_plane.read) as session:
            return await UserRepository(session).auth_state(user_id)

    # -- flows -----------------------------------------------------------------------------

    async def login(
        self, session: AsyncSession, email: str, password: str, tenant: str | None = None
    ) -> TokenPair:
        """Emails are unique per tenant: `tenant` names which account; without it, the
        platform admin with that address, else the one tenant user with it (an address in
        several tenants needs the tenant, and is otherwise the same 401 as a wrong one)."""
        user = await self._account(UserRepository(session), email, tenant)
        # Verify even when there is no such user: the same Argon2 work, no timing oracle.
        verification = await self.passwords.verify(user.password_hash if user else None, password)
        if user is None or not verification.valid or not user.is_active:
            self.metrics.login(LoginOutcome.BAD_PASSWORD)
            log.info("login_failed", account=email_hash(email))
            raise Unauthorized(BAD_CREDENTIALS, headers=BEARER)
        if self._is_tenant_suspended(user):
            self.metrics.login(LoginOutcome.SUSPENDED_TENANT)
            raise TenantSuspended()
        if verification.new_hash is not None:
            user.password_hash = verification.new_hash
            log.info("password_rehashed", user_id=str(user.id))
        self.metrics.login(LoginOutcome.SUCCESS)
        log.info("login_succeeded", user_id=str(user.id))
        return await self._issue(session, user, family_id=uuid.uuid4())

    def locked_out(self) -> None:
        """Count a login the per-account limit refused (the router enforces the limit)."""
        self.metrics.login(LoginOutcome.LOCKED_OUT)

    @staticmethod
    async def _account(users: UserRepository, email: str, tenant: str | None) -> User | None:
        if tenant is not None:
            return await users.get_by_email(email, tenant)
        holders = await users.holders_of(email)
        if holders and holders[0].tenant_slug is None:
            return holders[0]
        return holders[0] if len(holders) == 1 else None

    async def refresh(self, session: AsyncSession, token: str) -> TokenPair:
        """Rotate: the presented token is used up and a new one of the same family issued."""
        now = utc_now()
        token_hash = hash_refresh_token(token)
        claimed = await RefreshTokenRepository(session).claim(token_hash, now)
        if claimed is None:
            self.metrics.refresh(RefreshOutcome.REJECTED)
            await self._refuse_unusable(session, token_hash)
            raise Unauthorized(BAD_REFRESH_TOKEN, headers=BEARER)
        user = await UserRepository(session).get(claimed.user_id)
        if user is None or not user.is_active:
            self.metrics.refresh(RefreshOutcome.REJECTED)
            raise Unauthorized(BAD_REFRESH_TOKEN, headers=BEARER)
        if self._is_tenant_suspended(user):
            self.metrics.refresh(RefreshOutcome.SUSPENDED_TENANT)
            raise TenantSuspended()
        self.metrics.refresh(RefreshOutcome.SUCCESS)
        return await self._issue(session, user, family_id=claimed.family_id)

    def _is_tenant_suspended(self, user: User) -> bool:
        """No new tokens for the users of a suspended tenant, told why (they have proved who
        they are). Other states are left to the tenant routes, which answer 404 for them."""
        if user.tenant_slug is None:
            return False
        tenant = self.tenants.get(user.tenant_slug)
        if tenant is None or not tenant.is_suspended:
            return False
        log.info("tokens_refused_tenant_suspended", user_id=str(user.id))
        return True

    async def _refuse_unusable(self, session: AsyncSession, token_hash: str) -> None:
        """A used token that comes back was copied: revoke its family, and commit that now,
        before the 401 that follows rolls the request's transaction back."""
        refresh_tokens = RefreshTokenRepository(session)
        record = await refresh_tokens.find(token_hash)
        if record is None or not record.used:
            return  # unknown, expired or already revoked: nothing more to do
        revoked = await refresh_tokens.revoke_family(record.family_id, utc_now())
        await session.commit()
        await self._end_access_tokens_of(record.family_id)
        self.metrics.refresh_token_reuse.inc()
        log.warning(
            "refresh_token_reuse_detected",
            user_id=str(record.user_id),
            family_id=str(record.family_id),
            revoked=revoked,
        )

    async def logout(
        self,
        session: AsyncSession,
        principal: Principal,
        claims: AccessClaims,
        refresh_token: str | None,
    ) -> LogoutOutcome:
        now = utc_now()
        # Remembered only until the token would have expired anyway.
        ttl = int((claims.expires_at - now).total_seconds()) + 1
        await self.store.set(revoked_token_key(principal.token_id), b"1", max(1, ttl))
        revoked = 0
        if refresh_token:
            refresh_tokens = RefreshTokenRepository(session)
            record = await refresh_tokens.find(hash_refresh_token(refresh_token))
            # Someone else's token is ignored, without saying so.
            if record is not None and record.user_id == principal.user_id:
                revoked = await refresh_tokens.revoke_family(record.family_id, now)
                await self._end_access_tokens_of(record.family_id)
        log.info("logout", user_id=str(principal.user_id), sessions_revoked=revoked)
        return LogoutOutcome(access_token_revoked=True, refresh_tokens_revoked=revoked)

    async def _end_access_tokens_of(self, family_id: uuid.UUID) -> None:
        """From the next request on, no access token of this family works (the check is in
        the MGET every request makes); remembered as long as such a token could live."""
        ttl = self.settings.access_token_ttl_seconds + 1
        await self.store.set(revoked_family_key(family_id), b"1", ttl)

    async def logout_all(self, session: AsyncSession, principal: Principal) -> LogoutOutcome:
        await UserRepository(session).bump_token_version(principal.user_id)
        revoked = await RefreshTokenRepository(session).revoke_for_user(
            principal.user_id, utc_now()
        )
        # Every token check reads the token version from the cache: forget it once committed.
        after_commit(session, partial(self.auth_states.forget, principal.user_id))
        log.info("logout_all", user_id=str(principal.user_id), sessions_revoked=revoked)
        return LogoutOutcome(access_token_revoked=True, refresh_tokens_revoked=revoked)

    async def me(self, session: AsyncSession, principal: Principal) -> User:
        user = await UserRepository(session).get(principal.user_id)
        if user is None:  # deleted since authenticate() a moment ago
            raise _invalid_token()
        return user

    async def register(
        self, session: AsyncSession, *, tenant_slug: str, email: str, password: str
    ) -> User:
        tenant = self.tenants.get(tenant_slug)
        # One answer for unknown, not ready and closed tenants: nothing is disclosed.
        if tenant is None or not tenant.is_serving or not tenant.self_signup:
            raise NotFound(SIGNUP_UNAVAILABLE)
        new = NewUser(email=email, password=password, role=Role.MEMBER, tenant_slug=tenant_slug)
        user = await provision_user(session, self.passwords, new)
        log.info("user_registered", user_id=str(user.id), tenant=tenant_slug)
        return user

    async def _issue(self, session: AsyncSession, user: User, *, family_id: uuid.UUID) -> TokenPair:
        settings = self.settings
        access = self.tokens.issue(
            user_id=user.id,
            tenant_slug=user.tenant_slug,
            role=user.role,
            token_version=user.token_version,
            family_id=family_id,
        )
        refresh = new_refresh_token()
        await RefreshTokenRepository(session).add(
            user_id=user.id,
            family_id=family_id,
            token_hash=hash_refresh_token(refresh),
            expires_at=utc_now() + timedelta(seconds=settings.refresh_token_ttl_seconds),
        )
        return TokenPair(
            access_token=access.token,
            expires_in=settings.access_token_ttl_seconds,
            refresh_token=refresh,
            refresh_expires_in=settings.refresh_token_ttl_seconds,
        )
