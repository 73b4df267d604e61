"""Tenant-database models: articles and their tags (one database per tenant).

`author_id` is a control-plane user id: that user lives in another database, so there is
no foreign key and deleting a user does not touch their articles.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.core.clock import utc_now
from service.db.base import TenantBase


class ArticleStatus(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"


ARTICLE_STATUSES = tuple(status.value for status in ArticleStatus)
SLUG_MAX = 120
TITLE_MAX = 200
TAG_NAME_MAX = 50


class Article(TenantBase):
    __tablename__ = "articles"
    __table_args__ = (
        CheckConstraint(f"status IN {ARTICLE_STATUSES!r}", name="status_known"),
        # Keyset pagination orders by (created_at, id): the index serves both the order and
        # the "after this cursor" predicate.
        Index("ix_articles_created_at_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(SLUG_MAX), unique=True)
    title: Mapped[str] = mapped_column(String(TITLE_MAX))
    body: Mapped[str] = mapped_column(Text, default="", server_default="")
    status: Mapped[str] = mapped_column(
        String(16), index=True, default=ArticleStatus.DRAFT.value, server_default="draft"
    )
    author_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    # Set in Python with microseconds: SQLite's CURRENT_TIMESTAMP has whole seconds and
    # another text format, which would break keyset order and cursor comparisons.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utc_now, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utc_now, server_default=func.now(), onupdate=utc_now
    )
    # For optimistic concurrency (ETag / If-Match); the articles feature decides how to bump it.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    # lazy="raise": tags are loaded explicitly (reads select their names in the same or one
    # more statement, writes use joinedload), so a page can never N+1.
    tags: Mapped[list[Tag]] = relationship(
        secondary="article_tags", lazy="raise", order_by="Tag.name"
    )


class Tag(TenantBase):
    __tablename__ = "tags"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(TAG_NAME_MAX), unique=True)


class ArticleTag(TenantBase):
    __tablename__ = "article_tags"

    article_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True
    )
    # The primary key (article_id, tag_id) serves "tags of an article"; this index serves
    # "articles with a tag" and the cascade when a tag is deleted.
    tag_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True
    )
