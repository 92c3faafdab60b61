"""The domain errors of serving; the HTTP shell maps each to a status (``services/service.py``)."""

from __future__ import annotations


class NoModel(RuntimeError):
    """No model is loaded, or the loaded one lacks the part an endpoint needs (503)."""


class UnknownItem(LookupError):
    """The item is not in the served model's catalog (404)."""


class UnknownUser(LookupError):
    """Nothing is known about the user (404)."""


class StoreDown(RuntimeError):
    """The event store cannot be reached: nothing was stored (503 with Retry-After)."""


def is_store_down(exc: BaseException) -> bool:
    """Whether an error means the database could not be reached (not a bug in a query).

    Args:
        exc: the error.

    Returns:
        True for SQLAlchemy's operational, interface and disconnection errors.
    """
    import sqlalchemy as sa

    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.DisconnectionError)
