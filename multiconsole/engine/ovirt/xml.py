"""oVirt's XML, built and read with lxml (never by pasting strings).

The SDK reads children in any order and skips what it does not know, so builders only
need the right tag names; readers here accept the same leniency from clients.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fastapi import Response
from lxml import etree

from multiconsole.engine.errors import EngineError

MIME = "application/xml"
BASE = "/ovirt-engine/api"
# Request bodies are small (a console, a VM): refuse anything larger before parsing it.
MAX_BODY = 256 * 1024
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True)


def element(tag: str, text: Any = None, **attrs: Any) -> etree._Element:
    el = etree.Element(tag, {k: str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = _text(text)
    return el


def sub(parent: etree._Element, tag: str, text: Any = None, **attrs: Any) -> etree._Element:
    """A child element; a None text with no attributes still makes an (empty) element."""
    el = etree.SubElement(parent, tag, {k: str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = _text(text)
    return el


def opt(parent: etree._Element, tag: str, text: Any) -> None:
    """A child only when there is a value (oVirt leaves out what is unset)."""
    if text is not None:
        sub(parent, tag, text)


# What XML 1.0 cannot carry (control characters, lone surrogates): a fault that echoes a
# request's path or parameter must not fail on them (it was a 500).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return date(value)
    return _NOT_XML.sub("\ufffd", str(value))


def date(value: datetime) -> str:
    """oVirt's dates: ISO 8601 with milliseconds and the offset (the SDK parses both)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


def link(parent: etree._Element, tag: str, href: str, id_: str | None = None) -> etree._Element:
    """A reference to another object: `<vm href=".." id=".."/>`."""
    return sub(parent, tag, href=href, id=id_)


def rel_links(parent: etree._Element, base: str, rels: tuple[str, ...]) -> None:
    for rel in rels:
        sub(parent, "link", href=f"{base}/{rel}", rel=rel)


def actions(parent: etree._Element, base: str, names: tuple[str, ...]) -> None:
    box = sub(parent, "actions")
    for name in names:
        sub(box, "link", href=f"{base}/{name}", rel=name)


def collection(tag: str, items: list[etree._Element]) -> etree._Element:
    root = element(tag)
    root.extend(items)
    return root


def dumps(el: etree._Element) -> bytes:
    return etree.tostring(el, xml_declaration=True, encoding="UTF-8", standalone=True, pretty_print=True)


def parse(body: bytes, expected: str | tuple[str, ...], *, empty_ok: bool = False) -> etree._Element:
    """The request's root element, which must be one of `expected`; 400 with why otherwise."""
    tags = (expected,) if isinstance(expected, str) else expected
    if not body or not body.strip():
        if empty_ok:
            return element(tags[0])
        raise EngineError(tags[0], f"the request needs a <{tags[0]}> document", 400)
    if len(body) > MAX_BODY:
        raise EngineError(tags[0], f"the request body is larger than {MAX_BODY} bytes", 400)
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as err:
        raise EngineError(tags[0], f"the request is not well-formed XML: {err.msg}", 400) from None
    if root.tag not in tags:
        raise EngineError(tags[0], f"expected <{tags[0]}>, got <{root.tag}>", 400)
    return root


def child_text(el: etree._Element | None, path: str) -> str | None:
    """The stripped text at `path` (e.g. 'cluster/name'), None when absent or empty."""
    if el is None:
        return None
    found = el.find(path)
    if found is None or found.text is None:
        return None
    text = found.text.strip()
    return text or None


def ref(el: etree._Element, tag: str) -> tuple[str | None, str | None]:
    """(id, name) of a reference like `<cluster id=".."/>` or `<cluster><name>..</name></cluster>`."""
    found = el.find(tag)
    if found is None:
        return None, None
    return (found.get("id") or child_text(found, "id")), child_text(found, "name")


def integer(el: etree._Element, path: str, field: str) -> int | None:
    text = child_text(el, path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise EngineError(field, f"{text[:64]!r} is not an integer", 400) from None


def boolean(text: str | None, field: str) -> bool | None:
    if text is None:
        return None
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise EngineError(field, f"{text[:64]!r} is not a boolean (true or false)", 400)


def response(el: etree._Element, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(el), status_code=status, media_type=MIME, headers=headers)
