"""Data forms (XEP-0004): building them and reading submitted ones."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from parley.xmpp.stanza import child, make, q

NS_DATA = "jabber:x:data"

FormValues = dict[str, list[str]]


@dataclass(frozen=True)
class Field:
    var: str
    type: str = "text-single"
    label: str | None = None
    values: tuple[str, ...] = ()
    required: bool = False
    options: tuple[str, ...] = ()
    desc: str | None = None


def build_form(type_: str, fields: Iterable[Field], *, form_type: str | None = None,
               title: str | None = None, instructions: str | None = None) -> Element:
    x = make(NS_DATA, "x", {"type": type_})
    if title:
        child(x, NS_DATA, "title").text = title
    if instructions:
        child(x, NS_DATA, "instructions").text = instructions
    if form_type:
        ft = child(x, NS_DATA, "field", {"var": "FORM_TYPE", "type": "hidden"})
        child(ft, NS_DATA, "value").text = form_type
    for f in fields:
        attrs = {"var": f.var, "type": f.type}
        if f.label:
            attrs["label"] = f.label
        el = child(x, NS_DATA, "field", attrs)
        if f.desc:
            child(el, NS_DATA, "desc").text = f.desc
        if f.required and type_ == "form":
            child(el, NS_DATA, "required")
        for opt in f.options:
            child(child(el, NS_DATA, "option", {"label": opt}), NS_DATA, "value").text = opt
        for v in f.values:
            child(el, NS_DATA, "value").text = v
    return x


def parse_form(x: Element) -> FormValues:
    """Field var -> values of a submitted form, in the order given."""
    out: FormValues = {}
    for f in x.findall(q(NS_DATA, "field")):
        var = f.get("var")
        if var:
            out[var] = [v.text or "" for v in f.findall(q(NS_DATA, "value"))]
    return out


def submitted(parent: Element) -> FormValues | None:
    """The values of the submitted form inside `parent`, or None when there is none."""
    for x in parent.findall(q(NS_DATA, "x")):
        if x.get("type") == "submit":
            return parse_form(x)
    return None
