"""Parley: an on-premises enterprise IM and Presence server."""

__version__ = "0.1.0"
