"""Tenant-test helpers; the tenant fixtures shared with other features are in
tests/service/conftest.py."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from service.core.config import ObservabilitySettings
from service.core.logging import configure_logging
from service.tenants.schemas import TenantEntry, TenantLookup
from tests.service.conftest import (
    ProvisionFactory,
    SqliteTenants,
    sqlite_entry,
    unique_slug,
)

__all__ = ["ProvisionFactory", "SqliteTenants", "sqlite_entry", "unique_slug"]


class StaticLookup:
    """A TenantLookup over a dict, for rules that need no files."""

    def __init__(self, *entries: TenantEntry) -> None:
        self.entries = {entry.slug: entry for entry in entries}

    def get(self, slug: str) -> TenantEntry | None:
        return self.entries.get(slug)

    def slugs(self) -> list[str]:
        return sorted(self.entries)


def _static_lookup_is_a_tenant_lookup(lookup: StaticLookup) -> TenantLookup:
    return lookup  # mypy checks the protocol here


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Everything logged during the test, as JSON lines."""
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(log_format="json", log_level="DEBUG"), stream=stream)
    yield stream
    configure_logging(ObservabilitySettings(log_format="json"))
