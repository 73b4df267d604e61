"""Every control-plane model, imported so that `Base.metadata` is complete for Alembic."""

from service.auth.models import RefreshToken
from service.db.base import Base
from service.users.models import User

__all__ = ["Base", "RefreshToken", "User"]
