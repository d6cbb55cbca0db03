"""Group chat (XEP-0045): the chat service, its rooms and their persistence."""

from parley.modules.muc.service import MucModule

module_class = MucModule

__all__ = ["MucModule", "module_class"]
