"""Placeholder until the module lands."""

from parley.module import Module


class _M(Module):
    name = "register"


module_class = _M
