"""Reference (d): the same article row through a bare asyncpg pool, the floor for target (c).

A FastAPI app with no middleware, no authentication, no ORM: one hand-written statement on an
asyncpg pool (the article and its tag names in one round trip), returned through
`response_model` with the fields of berth's `ArticleOut`, so both bodies are alike. It connects
with the tenant's own role (BENCH_REFERENCE_DSN) and its pool is as large as one berth tenant
engine may grow (BENCH_REFERENCE_POOL_MAX), so the two compete for the same connections.

Served by `tests.bench.run` as `uvicorn tests.bench.reference_db_app:app`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

ARTICLE_BY_SLUG = """
SELECT a.id, a.slug, a.title, a.body, a.status, a.author_id, a.created_at, a.updated_at,
       a.version,
       coalesce(array_agg(t.name ORDER BY t.name) FILTER (WHERE t.name IS NOT NULL), '{}')
           AS tags
FROM articles a
LEFT JOIN article_tags at ON at.article_id = a.id
LEFT JOIN tags t ON t.id = at.tag_id
WHERE a.slug = $1
GROUP BY a.id
"""


class ArticleOut(BaseModel):
    id: uuid.UUID
    slug: str
    title: str
    body: str
    status: str
    author_id: uuid.UUID
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    version: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool_max = int(os.environ.get("BENCH_REFERENCE_POOL_MAX", "5"))
    app.state.pool = await asyncpg.create_pool(
        os.environ["BENCH_REFERENCE_DSN"], min_size=min(2, pool_max), max_size=pool_max
    )
    yield
    await app.state.pool.close()


app = FastAPI(title="berth-bench-reference-db", lifespan=lifespan)


@app.get("/articles/{slug}", response_model=ArticleOut)
async def get_article(slug: str, request: Request) -> ArticleOut:
    row = await request.app.state.pool.fetchrow(ARTICLE_BY_SLUG, slug)
    if row is None:
        raise HTTPException(status_code=404, detail="Article not found")
    return ArticleOut(**dict(row))


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
