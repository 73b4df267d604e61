"""The derived fields of a submission: totals per currency and a duty estimate. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from service.submissions.models import CurrencyValue, StoredLineItem, StoredTotal

# Four places: enough for every ISO 4217 minor unit (at most 4), rounding banker's way.
MONEY_PLACES = Decimal("0.0001")


@dataclass(frozen=True)
class DutyRates:
    """A rate per ISO 3166 origin country, `default` for the others."""

    by_country: Mapping[str, float]
    default: float

    def of(self, country: str) -> Decimal:
        return Decimal(str(self.by_country.get(country, self.default)))


def line_value(quantity: Decimal, unit_value: Decimal) -> Decimal:
    return (quantity * unit_value).quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN)


def totals_of(items: Iterable[StoredLineItem], rates: DutyRates) -> list[StoredTotal]:
    """Value and estimated duty per currency, currencies in alphabetical order."""
    values: defaultdict[str, Decimal] = defaultdict(Decimal)
    duties: defaultdict[str, Decimal] = defaultdict(Decimal)
    for item in items:
        values[item.currency] += item.line_value
        duties[item.currency] += item.line_value * rates.of(item.origin_country)
    return [
        StoredTotal(
            currency=currency,
            value=values[currency].quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN),
            duty=duties[currency].quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN),
        )
        for currency in sorted(values)
    ]


def currency_values_of(items: Iterable[StoredLineItem]) -> list[CurrencyValue]:
    """The declared value and item count per currency, currencies in alphabetical order."""
    values: defaultdict[str, Decimal] = defaultdict(Decimal)
    counts: defaultdict[str, int] = defaultdict(int)
    for item in items:
        values[item.currency] += item.line_value
        counts[item.currency] += 1
    return [
        CurrencyValue(currency=currency, value=values[currency], items=counts[currency])
        for currency in sorted(values)
    ]
