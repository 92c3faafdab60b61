"""The domain errors of serving; the HTTP shell maps each to a status (``services/service.py``)."""

from __future__ import annotations


class NoModel(RuntimeError):
    """No model is loaded, or the loaded one lacks the part an endpoint needs (503)."""


class UnknownItem(LookupError):
    """The item is not in the served model's catalog (404)."""


class UnknownUser(LookupError):
    """Nothing is known about the user (404)."""
