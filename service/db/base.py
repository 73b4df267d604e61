"""Declarative bases with one naming convention, so Alembic's constraint names are stable.

Two bases, two databases, two migration histories: `Base` for the control plane (users,
refresh tokens) and `TenantBase` for every tenant's own database (articles, tags). They never
share metadata: a foreign key across the two databases could not be enforced, and
autogenerate must compare each history with its own tables only. The migration environments
(`service/migrations/`) import the features' models so each metadata is complete.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Control-plane models inherit from this."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TenantBase(DeclarativeBase):
    """Tenant-database models inherit from this."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
