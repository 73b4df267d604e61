"""Alembic histories: `control_plane/` (users, refresh tokens) and `tenant/` (each tenant's own
database). Both run through `service.db.migrate` under advisory locks."""
