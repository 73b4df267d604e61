"""The chart's tests run the real helm binary (scripts/install-test-tools puts it in .tools)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.charts.support import Chart
from tests.support import require_tool


@pytest.fixture(scope="session")
def chart() -> Chart:
    return Chart(helm=require_tool("helm"))


@pytest.fixture(scope="session")
def kubernetes_validate() -> Path:
    return require_tool("kubernetes-validate")
