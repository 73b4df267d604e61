"""The declarative base of tenant databases (one database per tenant, its own Alembic history).

Tenant models never share metadata with the control plane: they live in another database,
so a foreign key across the two could not be enforced, and autogenerate must compare each
history with its own tables only.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from service.db.base import NAMING_CONVENTION


class TenantBase(DeclarativeBase):
    """Tenant-database models inherit from this (see `service.tenants.models`)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
