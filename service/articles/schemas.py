"""Articles on the wire: what clients send and what they get back."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from service.articles.models import SLUG_MAX, TAG_NAME_MAX, TITLE_MAX, ArticleStatus
from service.core.clock import UtcDateTime
from service.core.pagination import Page

BODY_MAX = 100_000
TAGS_MAX = 20
SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"

ArticleSlug = Annotated[str, StringConstraints(max_length=SLUG_MAX, pattern=SLUG_PATTERN)]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX)]


def _normalise_tag(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


# Normalised before the pattern is checked ("News " is the tag "news").
TagName = Annotated[
    str,
    BeforeValidator(_normalise_tag),
    StringConstraints(min_length=1, max_length=TAG_NAME_MAX, pattern=r"^[a-z0-9][a-z0-9 _-]*$"),
]
Body = Annotated[str, Field(max_length=BODY_MAX)]
Tags = Annotated[list[TagName], Field(max_length=TAGS_MAX)]


class ArticleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    slug: ArticleSlug | None = Field(default=None, description="Derived from the title if absent")
    body: Body = ""
    status: ArticleStatus = ArticleStatus.DRAFT
    tags: Tags = Field(default_factory=list)


class ArticlePatch(BaseModel):
    """Partial update: only the fields sent change (`exclude_unset`); none may be null."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    slug: ArticleSlug | None = None
    body: Body | None = None
    status: ArticleStatus | None = None
    tags: Tags | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> ArticlePatch:
        nulls = [name for name in self.model_fields_set if getattr(self, name) is None]
        if nulls:
            raise ValueError(f"may not be null: {', '.join(sorted(nulls))}")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class ArticleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    slug: str
    title: str
    body: str
    status: ArticleStatus
    author_id: uuid.UUID
    tags: list[str]
    created_at: UtcDateTime
    updated_at: UtcDateTime
    version: int


# ArticleOut's fields in wire order, and those that are timestamps: the fast render
# (service.article_json) writes records in exactly this shape, byte for byte (tested).
ARTICLE_OUT_FIELDS = tuple(ArticleOut.model_fields)
ARTICLE_OUT_STAMPS = tuple(
    name for name, field in ArticleOut.model_fields.items() if field.annotation is datetime
)


class ArticleFilters(BaseModel):
    status: ArticleStatus | None = None
    tag: TagName | None = None
    author_id: uuid.UUID | None = None
    q: Annotated[str, StringConstraints(min_length=1, max_length=TITLE_MAX)] | None = Field(
        default=None, description="Text contained in the title (case-insensitive)"
    )


ArticlePage = Page[ArticleOut]
