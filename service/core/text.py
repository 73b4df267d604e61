"""The one rule for text berth takes: what PostgreSQL can store.

PostgreSQL text cannot hold NUL (U+0000), and an unpaired surrogate (U+D800-U+DFFF, which
JSON can spell as "\\ud800") is not even UTF-8: either reaching the database is an error
there, a 500. `StorableTextMiddleware` (service/core/middleware.py) applies the rule to the
path, the query string and JSON and form bodies of every request, so a new route or field is
covered without a thought; everything else in Unicode passes.
"""

from __future__ import annotations

import re
from typing import Any

UNSTORABLE_TYPE = "unstorable_text"
UNSTORABLE_MESSAGE = "must not contain NUL or unpaired surrogate characters"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

Location = list[str | int]


def is_storable(text: str) -> bool:
    return _UNSTORABLE.search(text) is None


def _named(name: str) -> str:
    # A location must not carry what it points at: the bad characters become U+FFFD.
    return _UNSTORABLE.sub("\ufffd", name)


def find_unstorable(value: Any, location: Location) -> Location | None:
    """Where in `value` (decoded JSON: dicts, lists, strings, numbers) the first string
    PostgreSQL cannot store is, as a location below `location`; None when there is none."""
    if isinstance(value, str):
        return None if is_storable(value) else location
    if isinstance(value, dict):
        for key, item in value.items():
            if not is_storable(key):
                return [*location, _named(key)]
            found = find_unstorable(item, [*location, key])
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_unstorable(item, [*location, index])
            if found is not None:
                return found
    return None


def find_unstorable_field(pairs: list[tuple[str, str]], location: str) -> Location | None:
    """The first field of decoded `name=value` pairs (a query string, a form) whose name or
    value PostgreSQL cannot store."""
    for name, value in pairs:
        if not (is_storable(name) and is_storable(value)):
            return [location, _named(name)]
    return None
