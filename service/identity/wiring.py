"""The identity part of the app's container: keys, hashing, the auth-state cache, services.

Built once per app by the composition root (`service/main.py`); bad keys or limits refuse the
start there (ConfigError), not on the first request.
"""

from __future__ import annotations

from dataclasses import dataclass

import argon2

from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.pagination import CursorSigner
from service.core.slots import AppSlot
from service.core.store import KeyValueStore
from service.core.tenancy import TenantDirectory
from service.db.engine import SessionFactories
from service.identity.auth_service import REVOKED_FAMILY_PREFIX, REVOKED_TOKEN_PREFIX, AuthService
from service.identity.auth_state import AUTH_STATE_CACHE, AUTH_STATE_PREFIX, AuthStateCache
from service.identity.metrics import IdentityMetrics
from service.identity.passwords import Passwords, build_hasher
from service.identity.tokens import TokenCodec
from service.identity.users_service import UserService

USERS_CURSOR_KIND = "users"
# The keys the coherent in-process cache may answer (service/core/local_cache.py): what every
# authenticated request reads.
IDENTITY_LOCAL_PREFIXES = (AUTH_STATE_PREFIX, REVOKED_TOKEN_PREFIX, REVOKED_FAMILY_PREFIX)


@dataclass(frozen=True)
class Identity:
    tokens: TokenCodec
    passwords: Passwords
    auth_states: AuthStateCache
    auth: AuthService
    users: UserService


def build_identity(
    settings: Settings,
    *,
    store: KeyValueStore,
    control_plane: SessionFactories,
    tenants: TenantDirectory,
    metrics: Metrics,
    hasher: argon2.PasswordHasher | None = None,
) -> Identity:
    """`hasher` replaces the one the settings describe (tests count its calls)."""
    auth_settings = settings.auth
    tokens = TokenCodec(auth_settings)
    passwords = Passwords(
        hasher or build_hasher(auth_settings), auth_settings.argon2_max_concurrent
    )
    auth_states = AuthStateCache(
        store, auth_settings.state_cache_seconds, metrics.cache_lookups_of(AUTH_STATE_CACHE)
    )
    cursors = CursorSigner(
        settings.pagination.cursor_secret.get_secret_value().encode(), USERS_CURSOR_KIND
    )
    return Identity(
        tokens=tokens,
        passwords=passwords,
        auth_states=auth_states,
        auth=AuthService(
            auth_settings,
            tokens=tokens,
            passwords=passwords,
            auth_states=auth_states,
            store=store,
            control_plane=control_plane,
            tenants=tenants,
            metrics=IdentityMetrics(metrics.registry),
        ),
        users=UserService(passwords, auth_states, tenants, cursors),
    )


IDENTITY: AppSlot[Identity] = AppSlot("identity")
