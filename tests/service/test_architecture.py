"""The floor plan holds: layers, no import cycles, identity's public surface.

The contracts live once, in pyproject.toml (`[tool.importlinter]`); `make lint` runs them and
so does this test, so that `make test` alone fails on a cycle or a layer broken. The import
graph (grimp) counts every import: function-level ones and `if TYPE_CHECKING:` ones too, so
no cycle can hide behind either.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from service.core.config import Settings
from service.core.http import API_PREFIX
from service.core.routing import LeanRoute
from service.main import create_app
from tests.support import REPOSITORY

CONTRACTS = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@pytest.mark.parametrize("contract", [c["id"] for c in CONTRACTS])
def test_the_import_contract_is_kept(contract: str) -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--contract", contract, "--no-cache"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "KEPT" in result.stdout


def test_core_and_db_import_no_feature() -> None:
    """Spelled out beside the layers contract: the shared kit depends on nothing above it
    (the package's own `__init__`, which only knows the version, aside)."""
    graph = grimp.build_graph("service", cache_dir=None)
    below = ("service.core", "service.db")
    for module in sorted(graph.modules):
        if not module.startswith(below):
            continue
        imported = graph.find_modules_directly_imported_by(module) - {"service"}
        assert all(name.startswith(below) for name in imported), (module, imported)


def test_the_graph_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    """The contracts are only as good as the graph: build one over a tiny package whose two
    modules import each other, once inside a function and once under TYPE_CHECKING."""
    package = tmp_path / "probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f() -> None:\n    from probe_pkg import b  # noqa\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from probe_pkg import a\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("probe_pkg", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))

    assert graph.direct_import_exists(importer="probe_pkg.a", imported="probe_pkg.b")
    assert graph.direct_import_exists(importer="probe_pkg.b", imported="probe_pkg.a")


def test_every_api_route_is_a_lean_route() -> None:
    """Feature routers are made with `route_class=LeanRoute`: plain graphs are solved without
    FastAPI's generic solver, the others fall back to it."""
    app = create_app(Settings())
    routes = [
        context.original_route
        for context in iter_route_contexts(app.routes)
        if isinstance(getattr(context, "original_route", None), APIRoute)
        and context.path.startswith(API_PREFIX)
    ]

    assert routes
    assert all(isinstance(route, LeanRoute) for route in routes), [
        route.path for route in routes if not isinstance(route, LeanRoute)
    ]
