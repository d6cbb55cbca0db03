"""Placeholder until the module lands."""

from parley.module import Module


class _M(Module):
    name = "extdisco"


module_class = _M
