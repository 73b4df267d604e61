"""Tenant-test helpers; the tenant fixtures shared with other features are in
tests/service/conftest.py."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from service.core.config import ObservabilitySettings
from service.core.logging import configure_logging
from tests.service.conftest import (
    ProvisionFactory,
    SqliteTenants,
    sqlite_entry,
    unique_slug,
)

__all__ = ["ProvisionFactory", "SqliteTenants", "sqlite_entry", "unique_slug"]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Everything logged during the test, as JSON lines."""
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(log_format="json", log_level="DEBUG"), stream=stream)
    yield stream
    configure_logging(ObservabilitySettings(log_format="json"))
