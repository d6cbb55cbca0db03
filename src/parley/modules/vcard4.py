"""Placeholder until the module lands."""

from parley.module import Module


class _M(Module):
    name = "vcard4"


module_class = _M
