"""Declarations for tests: valid by default, each field overridable."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from service.core.clock import utc_now
from service.submissions.models import StoredLineItem, SubmissionFields
from service.submissions.processing import currency_values_of, line_value
from service.submissions.schemas import Declarant
from service.submissions.service import mongo_time


def line_item(**fields: Any) -> dict[str, Any]:
    """One valid line item; `fields` override."""
    return {"description": "Laptop", "quantity": "2", "unit_value": "10.50", "currency": "EUR",
            "origin_country": "CN", "hs_code": "847130", **fields}  # fmt: skip


def declaration(items: int = 1, **fields: Any) -> dict[str, Any]:
    """A valid JSON declaration with `items` line items; `fields` override."""
    return {
        "reference": "ABC-1",
        "declarant": {"name": "Acme GmbH", "eori": "DE123456789", "country": "DE"},
        "items": [line_item(description=f"Item {n}") for n in range(items)],
        **fields,
    }


def xml_declaration(body: dict[str, Any]) -> bytes:
    """`body` (a JSON declaration) as the XML form of the same declaration."""

    def element(tag: str, value: Any) -> str:
        if isinstance(value, dict):
            return f"<{tag}>{''.join(element(k, v) for k, v in value.items())}</{tag}>"
        if isinstance(value, list):
            return f"<{tag}>{''.join(element('item', v) for v in value)}</{tag}>"
        return f"<{tag}>{value}</{tag}>"

    return element("declaration", body).encode()


def stored_line(
    quantity: str = "2", unit_value: str = "10.50", currency: str = "EUR", origin: str = "CN"
) -> StoredLineItem:
    """A line item as the service stores it (its value computed the service's way)."""
    amount, price = Decimal(quantity), Decimal(unit_value)
    return StoredLineItem(description="Item", quantity=amount, unit_value=price,
                          currency=currency, origin_country=origin,
                          line_value=line_value(amount, price))  # fmt: skip


def stored_submission(lines: list[StoredLineItem] | None = None, **fields: Any) -> SubmissionFields:
    """A PENDING submission as `POST` stores it, written without the API (bulk seeding, a
    claimed one for the worker); `fields` override (status, created_at, lease_owner ...)."""
    items = lines or [stored_line()]
    now = mongo_time(utc_now())
    values: dict[str, Any] = {
        "created_by": uuid.uuid4(), "created_at": now, "updated_at": now, "not_before": now,
        "reference": "W-1", "content_type": "json",
        "declarant": Declarant(name="Acme GmbH", eori="DE123456789", country="DE"),
        "items": items, "item_count": len(items), "currency_values": currency_values_of(items),
        **fields,
    }  # fmt: skip
    return SubmissionFields(**values)
