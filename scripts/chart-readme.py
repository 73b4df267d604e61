#!/usr/bin/env python3
"""Write the parameter table of charts/berth/README.md from values.yaml's `# --` comments.

`python scripts/chart-readme.py` rewrites the table between the markers; `--check` exits 1
when the README is out of date (the chart tests run it), so the table never drifts.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "berth"
BEGIN, END = "<!-- parameters:begin -->", "<!-- parameters:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):")
_DOC = re.compile(r"^ *# -- (?P<doc>.*)$")


def parameters(values_text: str) -> list[tuple[str, str, str]]:
    """(dotted key, default as JSON, description) of every value documented with `# --`."""
    values = yaml.safe_load(values_text)
    rows: list[tuple[str, str, str]] = []
    path: list[tuple[int, str]] = []
    doc: str | None = None
    for line in values_text.splitlines():
        if match := _DOC.match(line):
            doc = match["doc"]
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        indent = len(match["indent"])
        path = [(level, key) for level, key in path if level < indent]
        path.append((indent, match["key"]))
        if doc is not None:
            keys = [key for _, key in path]
            rows.append((".".join(keys), json.dumps(_lookup(values, keys)), doc))
            doc = None
    return rows


def _lookup(values: Any, keys: list[str]) -> Any:
    for key in keys:
        values = values[key]
    return values


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| Key | Default | Description |", "| --- | --- | --- |"]
    lines += [f"| `{key}` | `{default}` | {doc} |" for key, default, doc in rows]
    return "\n".join(lines)


def rendered(readme: str, values_text: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(parameters(values_text))}\n{END}{tail}"


def main(argv: list[str]) -> int:
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    fresh = rendered(readme, (CHART / "values.yaml").read_text())
    if "--check" in argv:
        if fresh != readme:
            print("charts/berth/README.md is out of date: python scripts/chart-readme.py")
            return 1
        return 0
    readme_path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
