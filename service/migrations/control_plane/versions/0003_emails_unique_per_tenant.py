"""Emails unique per tenant (and among platform admins), not across all tenants.

An owner creating a user must not learn whether an address exists in another tenant, and one
person may be a user of several tenants. Downgrading fails while an address is used in more
than one tenant (the old global rule would not hold).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 07:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PLATFORM_ADMINS = sa.text("tenant_slug IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint("uq_users_email", type_="unique")
        batch_op.create_unique_constraint("uq_users_tenant_email", ["tenant_slug", "email"])
    op.create_index(
        "uq_users_platform_admin_email",
        "users",
        ["email"],
        unique=True,
        postgresql_where=PLATFORM_ADMINS,
        sqlite_where=PLATFORM_ADMINS,
    )


def downgrade() -> None:
    op.drop_index("uq_users_platform_admin_email", table_name="users")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint("uq_users_tenant_email", type_="unique")
        batch_op.create_unique_constraint("uq_users_email", ["email"])
