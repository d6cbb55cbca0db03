"""XEP-0115 entity capabilities: the verification string and its check.

Pure functions over disco#info data, so the server can advertise its own ``ver`` and
check what clients advertise (PEP's +notify filtering trusts only verified strings).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple
from xml.etree.ElementTree import Element

from parley.xmpp.stanza import XML_LANG, q

NS_CAPS = "http://jabber.org/protocol/caps"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"

# Names from the IANA hash function textual names registry, as XEP-0115 uses them.
# MD5 is left out on purpose: it is unavailable in FIPS mode and too weak to trust.
HASHES = {
    "sha-1": "sha1",
    "sha-224": "sha224",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
}

# A data form as the hash sees it: field var -> values, FORM_TYPE included.
Form = Mapping[str, Sequence[str]]


class Identity(NamedTuple):
    category: str
    type: str
    lang: str = ""
    name: str = ""


class IllFormed(ValueError):
    """A disco#info result that XEP-0115 section 5.4 says must not be cached."""


class DiscoInfo(NamedTuple):
    identities: list[Identity]
    features: list[str]
    forms: list[dict[str, list[str]]]


def caps_ver(identities: Iterable[Identity], features: Iterable[str], forms: Iterable[Form] = (),
             hash_name: str = "sha-1") -> str:
    """The verification string of XEP-0115 section 5.1, base64 of the hash."""
    algo = HASHES.get(hash_name.lower())
    if algo is None:
        raise ValueError(f"unsupported caps hash {hash_name!r}")
    # Plain str ordering is code point ordering, which is the i;octet order of UTF-8.
    s = "".join(f"{i.category}/{i.type}/{i.lang}/{i.name}<" for i in sorted(identities))
    s += "".join(f"{f}<" for f in sorted(features))
    for form in sorted(forms, key=_form_type):
        s += f"{_form_type(form)}<"
        for var in sorted(v for v in form if v != "FORM_TYPE"):
            s += f"{var}<"
            s += "".join(f"{value}<" for value in sorted(form[var]))
    digest = hashlib.new(algo, s.encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def _form_type(form: Form) -> str:
    values = form.get("FORM_TYPE") or ("",)
    return values[0]


def parse_info(query: Element) -> DiscoInfo:
    """Identities, features and usable forms of a disco#info ``<query/>``.

    Raises IllFormed for the duplicates that section 5.4 rules out; forms without a
    hidden FORM_TYPE are skipped, as that section says.
    """
    identities: list[Identity] = []
    for el in query.findall(q(NS_DISCO_INFO, "identity")):
        ident = Identity(el.get("category", ""), el.get("type", ""), el.get(XML_LANG, ""),
                         el.get("name", ""))
        if ident in identities:
            raise IllFormed(f"duplicate identity {ident}")
        identities.append(ident)
    features: list[str] = []
    seen: set[str] = set()
    for el in query.findall(q(NS_DISCO_INFO, "feature")):
        var = el.get("var", "")
        if var in seen:
            raise IllFormed(f"duplicate feature {var!r}")
        seen.add(var)
        features.append(var)
    forms: list[dict[str, list[str]]] = []
    form_types: set[str] = set()
    for x in query.findall(q(NS_DATA, "x")):
        form: dict[str, list[str]] = {}
        hidden_type = False
        for field in x.findall(q(NS_DATA, "field")):
            var = field.get("var")
            if var is None:
                continue
            values = [v.text or "" for v in field.findall(q(NS_DATA, "value"))]
            if var == "FORM_TYPE":
                if len(set(values)) > 1:
                    raise IllFormed("FORM_TYPE with several different values")
                hidden_type = field.get("type") == "hidden"
            form.setdefault(var, []).extend(values)
        if not hidden_type or not form.get("FORM_TYPE"):
            continue
        ftype = form["FORM_TYPE"][0]
        if ftype in form_types:
            raise IllFormed(f"two forms of type {ftype!r}")
        form_types.add(ftype)
        forms.append(form)
    return DiscoInfo(identities, features, forms)


def verify_ver(ver: str, query: Element, hash_name: str = "sha-1") -> bool:
    """Whether a client's advertised ``ver`` matches the disco#info result it gave."""
    try:
        info = parse_info(query)
        return caps_ver(info.identities, info.features, info.forms, hash_name) == ver
    except ValueError:  # IllFormed, or a hash we do not know
        return False
