"""The tenant registry entry: one JSON file per tenant (docs/tenants.md).

The operator writes these as keys of a Secret mounted into the pod; locally the CLI writes
them. This model is the single definition of the format.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from service.core.tenancy import TenantSlug

ENTRY_SUFFIX = ".json"


class TenantStatus(StrEnum):
    PROVISIONING = "provisioning"
    READY = "ready"
    SUSPENDED = "suspended"
    DELETING = "deleting"


class TenantEntry(BaseModel):
    """What the service needs to serve one tenant; secrets stay SecretStr."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    slug: TenantSlug
    status: TenantStatus = TenantStatus.READY
    self_signup: bool = False
    # SQLAlchemy URL with the tenant's own login role (postgresql+asyncpg://...) or a SQLite
    # file locally (sqlite+aiosqlite:///...).
    database_url: SecretStr
    mongo_url: SecretStr | None = None
    mongo_database: str | None = Field(default=None, max_length=63)
    schema_version: str | None = None

    @property
    def is_serving(self) -> bool:
        return self.status is TenantStatus.READY

    @property
    def is_suspended(self) -> bool:
        return self.status is TenantStatus.SUSPENDED

    @property
    def accepts_new_users(self) -> bool:
        """Users may be added while it is provisioned, served or suspended, not deleted."""
        return self.status is not TenantStatus.DELETING


class TenantLookup(Protocol):
    """Read access to the registry: what request handling needs (the registry implements it)."""

    def get(self, slug: str) -> TenantEntry | None: ...

    def slugs(self) -> list[str]: ...
