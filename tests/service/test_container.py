"""The composition root: one container per app, every slot filled, nothing opened early."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import pytest

import service
from service.container import Container, build_container, container_of
from service.core.config import Settings
from service.core.slots import AppSlot
from service.core.startup import StartupError
from service.main import create_app
from tests.conftest import ClientFactory
from tests.support import free_port


def every_slot() -> dict[str, AppSlot[object]]:
    """Every AppSlot any module of the service declares, by where it is declared."""
    slots: dict[str, AppSlot[object]] = {}
    for info in pkgutil.walk_packages(service.__path__, prefix="service."):
        if info.name.endswith("__main__"):  # importing it runs the command line
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, AppSlot):
                slots.setdefault(value.name, value)
    return slots


def test_every_declared_slot_is_filled_on_a_built_app(
    make_settings: Callable[..., Settings],
) -> None:
    """A feature that declares a slot and is not wired by the root would fail on its first
    request in production; here it fails at once."""
    app = create_app(make_settings())
    slots = every_slot()

    assert {"container", "core", "control_plane", "tenancy", "identity", "articles",
            "readiness"} <= set(slots)  # fmt: skip
    for slot in slots.values():
        assert slot.of_app(app) is not None, slot


def test_building_the_container_opens_no_connection(make_settings: Callable[..., Settings]) -> None:
    """Unreachable PostgreSQL and Redis: the container and the app still build (engines and
    the Redis client connect on first use), so a bad key or limit is the only thing that can
    refuse a start this early."""
    nowhere = free_port()
    settings = make_settings(
        database={"url": f"postgresql+asyncpg://berth@127.0.0.1:{nowhere}/berth"},
        redis={"url": f"redis://127.0.0.1:{nowhere}/0"},
    )

    container = build_container(settings)
    app = create_app(container=container)

    assert isinstance(container_of(app), Container)
    assert container_of(app) is container
    assert container.core.store.backend == "redis"


async def test_a_start_that_cannot_reach_the_database_fails_in_one_line_and_closes(
    make_settings: Callable[..., Settings], client_for: ClientFactory
) -> None:
    nowhere = free_port()
    settings = make_settings(database={"url": f"postgresql+asyncpg://b@127.0.0.1:{nowhere}/b"})
    app = create_app(settings)
    undone: list[str] = []
    container_of(app).on_close.append(lambda: undone.append("undone"))

    with pytest.raises(StartupError, match="unreachable after 1 attempts"):
        await client_for(app)

    assert undone == ["undone"]
