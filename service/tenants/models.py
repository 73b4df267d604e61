"""Every tenant-database model, imported so that `TenantBase.metadata` is complete."""

from service.articles.models import Article, ArticleTag, Tag
from service.tenants.db import TenantBase

__all__ = ["Article", "ArticleTag", "Tag", "TenantBase"]
