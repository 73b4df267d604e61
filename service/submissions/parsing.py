"""Declaration bodies, JSON or XML, to the plain dict the declaration schema validates.

XML comes from outside: defusedxml parses it with DTDs, entities and external references
forbidden, and the tree builder refuses too many or too deeply nested elements as they arrive,
so a hostile body costs linear time and reaches no file or network. What a schema cannot
express (attributes, a repeated element, mixed content) is a 400 here; unknown elements stay
in the dict, so the schema's `extra="forbid"` names them in a 422.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from http import HTTPStatus
from typing import Any
from xml.parsers.expat import ErrorString

import orjson
from defusedxml import (
    DefusedXmlException,
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)
from defusedxml.ElementTree import DefusedXMLParser

from service.core.errors import DomainError

# 1000 items of 7 elements (the item and its 6 fields), the declarant's 4, and slack.
MAX_XML_ELEMENTS = 10_000
# A valid declaration nests 4 deep (declaration/items/item/description); the slack lets an
# unknown nested element reach the schema, which names it in a 422.
MAX_XML_DEPTH = 8

ROOT_ELEMENT = "declaration"
# The elements holding a list, by path, and the one child tag each may hold.
_LIST_ELEMENTS = {f"{ROOT_ELEMENT}/items": "item"}
# Element names are the body's own, of any length: messages quote at most this much of one,
# and paths stay short however long a name is.
_MAX_NAME_IN_MESSAGE = 64


class MalformedDeclaration(DomainError):
    """A body that cannot be read as a declaration (400); the message says why, never quotes it."""

    status_code = HTTPStatus.BAD_REQUEST
    message = "The declaration cannot be read"


def parse_json_declaration(body: bytes) -> dict[str, Any]:
    """A JSON body to the declaration dict; malformed JSON or a non-object is a 400."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson's reasons are fixed phrases; the position locates the fault without quoting.
        raise MalformedDeclaration(
            f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(value, dict):
        raise MalformedDeclaration("a JSON declaration must be an object")
    return value


def parse_xml_declaration(body: bytes) -> dict[str, Any]:
    """An XML body (root `<declaration>`) to the declaration dict; refusals are a 400."""
    root = _parse(body)
    if root.tag != ROOT_ELEMENT:
        raise MalformedDeclaration(
            f"the root element of an XML declaration must be <{ROOT_ELEMENT}>"
        )
    value = _convert(root, ROOT_ELEMENT)
    if value == "":
        # `<declaration/>`: no fields, which the schema reports one by one in a 422.
        return {}
    if not isinstance(value, dict):
        raise MalformedDeclaration(f"{ROOT_ELEMENT} must contain elements, not text")
    return value


class _BoundedTreeBuilder(ET.TreeBuilder):
    """Refuses while parsing what must never be built: too many or too deeply nested
    elements, processing instructions (the builder would silently drop them), namespaces."""

    def __init__(self) -> None:
        super().__init__()
        self._elements = 0
        self._depth = 0

    def start(self, tag: str, attrs: dict[str, str], /) -> ET.Element:
        self._elements += 1
        if self._elements > MAX_XML_ELEMENTS:
            raise MalformedDeclaration(
                f"XML declarations may not have more than {MAX_XML_ELEMENTS} elements"
            )
        self._depth += 1
        if self._depth > MAX_XML_DEPTH:
            raise MalformedDeclaration(
                f"XML declarations may not nest elements more than {MAX_XML_DEPTH} deep"
            )
        return super().start(tag, attrs)

    def end(self, tag: str, /) -> ET.Element:
        self._depth -= 1
        return super().end(tag)

    def pi(self, target: str, text: str | None = None, /) -> ET.Element:
        # The `<?xml ...?>` declaration is not a processing instruction: it never comes here.
        raise MalformedDeclaration("XML declarations may not contain processing instructions")

    def start_ns(self, prefix: str, uri: str, /) -> None:
        raise MalformedDeclaration("XML declarations may not declare namespaces")


def _parse(body: bytes) -> ET.Element:
    parser = DefusedXMLParser(
        target=_BoundedTreeBuilder(),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    # `from None` throughout: defusedxml's errors carry entity names and URLs from the body.
    try:
        parser.feed(body)
        root: ET.Element = parser.close()
    except DTDForbidden:
        raise MalformedDeclaration("XML declarations may not contain a DTD") from None
    except EntitiesForbidden:
        raise MalformedDeclaration("XML declarations may not contain entity declarations") from None
    except ExternalReferenceForbidden:
        raise MalformedDeclaration("XML declarations may not reference external entities") from None
    except DefusedXmlException:
        raise MalformedDeclaration("XML declarations may not use this XML feature") from None
    except ET.ParseError as exc:
        line, column = exc.position
        # Expat's reasons ("mismatched tag", "undefined entity") are fixed phrases.
        raise MalformedDeclaration(
            f"malformed XML at line {line}, column {column}: {ErrorString(exc.code)}"
        ) from None
    except LookupError:
        # pyexpat asks the codecs for an encoding it does not know; the name is the body's.
        raise MalformedDeclaration("the XML declaration names an unknown encoding") from None
    except ValueError:
        # pyexpat decodes only single-byte encodings besides UTF-8 and UTF-16 itself.
        raise MalformedDeclaration(
            "the XML declaration names an unsupported multi-byte encoding"
        ) from None
    return root


def _name(tag: str) -> str:
    if len(tag) <= _MAX_NAME_IN_MESSAGE:
        return tag
    return tag[:_MAX_NAME_IN_MESSAGE] + "..."


def _convert(element: ET.Element, path: str) -> Any:
    """An element to a str (text only), a list (a list element) or a dict (child elements)."""
    if element.attrib:
        raise MalformedDeclaration(f"{path} may not have attributes")
    children = list(element)
    text = (element.text or "").strip()
    mixed = bool(text) or any((child.tail or "").strip() for child in children)
    if path in _LIST_ELEMENTS:
        return _convert_list(children, path, _LIST_ELEMENTS[path], has_text=mixed)
    if not children:
        return text
    if mixed:
        raise MalformedDeclaration(f"{path} mixes text with elements")
    fields: dict[str, Any] = {}
    for child in children:
        child_path = f"{path}/{_name(child.tag)}"
        # Expat resolves a prefix to `{uri}name`; `xml:` is the one needing no declaration.
        if child.tag.startswith("{"):
            raise MalformedDeclaration(f"{child_path} is in a namespace; declarations use none")
        if child.tag in fields:
            raise MalformedDeclaration(f"{child_path} appears twice")
        fields[child.tag] = _convert(child, child_path)
    return fields


def _convert_list(
    children: list[ET.Element], path: str, item_tag: str, *, has_text: bool
) -> list[Any]:
    if has_text:
        raise MalformedDeclaration(f"{path} may contain only <{item_tag}> elements, not text")
    items: list[Any] = []
    # XPath-style positions, from 1, so `items/item[3]` reads as the third item.
    for position, child in enumerate(children, start=1):
        if child.tag != item_tag:
            raise MalformedDeclaration(f"{path} may contain only <{item_tag}> elements")
        items.append(_convert(child, f"{path}/{item_tag}[{position}]"))
    return items
