"""Small helpers for building stanzas and their error replies (RFC 6120 section 8.3)."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement, fromstring

NS_CLIENT = "jabber:client"
NS_SERVER = "jabber:server"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_XML = "http://www.w3.org/XML/1998/namespace"
XML_LANG = f"{{{NS_XML}}}lang"

# Conditions and the error type RFC 6120 section 8.3.3 suggests for each.
ERROR_TYPES = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def namespace(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""


def make(ns: str, name: str, attrs: dict[str, str] | None = None, *children: Element, text: str | None = None) -> Element:
    el = Element(q(ns, name), attrs or {})
    el.extend(children)
    if text is not None:
        el.text = text
    return el


def child(parent: Element, ns: str, name: str, attrs: dict[str, str] | None = None) -> Element:
    return SubElement(parent, q(ns, name), attrs or {})


def error_element(condition: str, text: str | None = None, type_: str | None = None,
                  app: Element | None = None) -> Element:
    err = Element(q(NS_CLIENT, "error"), {"type": type_ or ERROR_TYPES.get(condition, "cancel")})
    SubElement(err, q(NS_STANZAS, condition))
    if text:
        SubElement(err, q(NS_STANZAS, "text"), {XML_LANG: "en"}).text = text
    if app is not None:
        err.append(app)
    return err


def error_reply(stanza: Element, condition: str, text: str | None = None, type_: str | None = None,
                app: Element | None = None) -> Element:
    """The error reply to a stanza: same kind and id, addresses swapped."""
    reply = Element(stanza.tag, {"type": "error"})
    if stanza.get("id") is not None:
        reply.set("id", stanza.get("id", ""))
    if stanza.get("to"):
        reply.set("from", stanza.get("to", ""))
    if stanza.get("from"):
        reply.set("to", stanza.get("from", ""))
    # The request's payload helps the sender match the error; messages keep their body.
    for c in stanza:
        if local_name(c.tag) != "error":
            reply.append(c)
            break
    reply.append(error_element(condition, text, type_, app))
    return reply


def iq_result(iq: Element, *payload: Element) -> Element:
    reply = Element(q(NS_CLIENT, "iq"), {"type": "result", "id": iq.get("id", "")})
    if iq.get("to"):
        reply.set("from", iq.get("to", ""))
    if iq.get("from"):
        reply.set("to", iq.get("from", ""))
    reply.extend(payload)
    return reply


def is_error(stanza: Element) -> bool:
    return stanza.get("type") == "error"


def from_stored(xml: str) -> Element:
    """A stanza the server stored itself (serialised in the jabber:client namespace)."""
    return fromstring(f"<stored xmlns='{NS_CLIENT}'>{xml}</stored>")[0]
