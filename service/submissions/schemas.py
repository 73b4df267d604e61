"""Submissions on the wire: the declaration clients send and what they get back."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic_extra_types.country import CountryAlpha2
from pydantic_extra_types.currency_code import ISO4217

from service.core.clock import UtcDateTime
from service.core.pagination import Page

MAX_ITEMS = 1000
MAX_QUANTITY = Decimal("1000000000")
MAX_UNIT_VALUE = Decimal("1000000000000")
IDEMPOTENCY_KEY_MAX = 128


class SubmissionStatus(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    PROCESSED = "PROCESSED"
    FAILED = "FAILED"


Description = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
DeclarantName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
]
Reference = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
# An EORI number: the country code and up to 15 letters or digits.
Eori = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Z]{2}[A-Z0-9]{1,15}$")]
HsCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{6,10}$")]
Quantity = Annotated[Decimal, Field(gt=0, le=MAX_QUANTITY, max_digits=16, decimal_places=3)]
UnitValue = Annotated[Decimal, Field(ge=0, le=MAX_UNIT_VALUE, max_digits=17, decimal_places=4)]


class Declarant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: DeclarantName
    eori: Eori
    country: CountryAlpha2


class LineItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: Description
    quantity: Quantity
    unit_value: UnitValue
    currency: ISO4217
    origin_country: CountryAlpha2
    hs_code: HsCode | None = None


class DeclarationIn(BaseModel):
    """A customs-style declaration (JSON or XML, `service/submissions/parsing.py`)."""

    model_config = ConfigDict(extra="forbid")

    reference: Reference | None = None
    declarant: Declarant
    items: list[LineItem] = Field(min_length=1, max_length=MAX_ITEMS)


class CurrencyTotalOut(BaseModel):
    currency: str
    value: Decimal
    duty: Decimal


class SubmissionSummary(BaseModel):
    """A submission as listed: no line items (the list projection leaves them out)."""

    id: uuid.UUID
    status: SubmissionStatus
    reference: str | None
    declarant: Declarant
    item_count: int
    content_type: str
    created_at: UtcDateTime
    updated_at: UtcDateTime
    processed_at: UtcDateTime | None = None
    attempts: int
    failure_reason: str | None = None
    totals: list[CurrencyTotalOut] | None = None


class LineItemOut(LineItem):
    model_config = ConfigDict(extra="ignore")

    line_value: Decimal = Field(description="quantity x unit_value")


class SubmissionOut(SubmissionSummary):
    items: list[LineItemOut]


class SubmissionFilters(BaseModel):
    status: SubmissionStatus | None = None
    created_from: datetime | None = Field(default=None, description="Created at or after")
    created_to: datetime | None = Field(default=None, description="Created before")
    declarant: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="The declarant's EORI number or exact name"
    )


class StatusCount(BaseModel):
    status: SubmissionStatus
    count: int


class DayCount(BaseModel):
    day: str = Field(description="UTC date, YYYY-MM-DD")
    count: int


class CurrencyTotal(BaseModel):
    currency: str
    value: Decimal
    items: int


class SubmissionStats(BaseModel):
    """One aggregation over the window: counts by status, per day, totals per currency."""

    window_days: int
    since: UtcDateTime
    by_status: list[StatusCount]
    per_day: list[DayCount]
    totals: list[CurrencyTotal]


SubmissionPage = Page[SubmissionSummary]
