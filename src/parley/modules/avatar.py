"""Placeholder until the module lands."""

from parley.module import Module


class _M(Module):
    name = "avatar"


module_class = _M
