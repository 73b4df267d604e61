"""Only the service's role may connect to the control-plane database (PostgreSQL).

PUBLIC may connect to a new database by default, so every tenant's login role could reach
the control plane and read its catalog. CONNECT is revoked from PUBLIC and granted to the
role that runs the migrations, which is the service's own (BERTH_DATABASE__URL). On SQLite
there are no roles: nothing to do.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:10:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _on_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _on_postgresql():
        return
    # current_database() and current_user are the database and role of this very run.
    op.execute(
        """
        DO $$
        BEGIN
            EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database());
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), current_user);
        END
        $$
        """
    )


def downgrade() -> None:
    if not _on_postgresql():
        return
    op.execute(
        """
        DO $$
        BEGIN
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO PUBLIC', current_database());
        END
        $$
        """
    )
