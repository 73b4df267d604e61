"""Typed slots on the app for what lives as long as it.

The composition root (`service/main.py`) builds one container of the app's long-lived
objects and puts each part into its slot once, before the app serves. A feature declares
the slot of the part it owns next to the part's type (`IDENTITY`, `TENANCY`, ...) and reads
it from a request with `SLOT.of(request)`: typed, never `None`, and the only code in berth
that touches `app.state`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

T = TypeVar("T")


class AppSlot(Generic[T]):
    """One part of the app's container, readable from any request of that app."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def fill(self, app: Starlette, value: T) -> None:
        """Put the part in place (the composition root, once per app)."""
        setattr(app.state, self.name, value)

    def of_app(self, app: Starlette) -> T:
        value: T = getattr(app.state, self.name)
        return value

    def of(self, connection: HTTPConnection) -> T:
        """The part, from the app serving `connection` (a Request or a WebSocket)."""
        value: T = getattr(connection.app.state, self.name)
        return value

    def __repr__(self) -> str:
        return f"AppSlot({self.name!r})"
