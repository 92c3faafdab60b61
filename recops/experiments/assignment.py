"""Who sees which variant: a pure function of (salt, user), so every worker, replica and restart
agrees without storing an assignment.

A user's bucket is a hash of the experiment's salt and their id (the session id for anonymous
visitors) into ``BUCKETS``; they are in the challenger while their bucket is below
``share * BUCKETS``. Raising the share therefore keeps everyone already in the challenger there.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000
CONTROL, CHALLENGER = "control", "challenger"


def bucket(salt: str, unit_id: str) -> int:
    """The user's bucket for an experiment.

    Args:
        salt: the experiment's salt (a new salt reshuffles everyone).
        unit_id: the user id, or the session id of an anonymous visitor.

    Returns:
        A bucket in ``[0, BUCKETS)``, the same on every machine and every run.
    """
    digest = hashlib.blake2b(f"{salt}\x1f{unit_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def variant(salt: str, unit_id: str, share: float) -> str:
    """The variant a user sees.

    Args:
        salt: the experiment's salt.
        unit_id: the user id, or the session id of an anonymous visitor.
        share: the challenger's traffic share, in [0, 1].

    Returns:
        ``CHALLENGER`` when the user's bucket is below ``share * BUCKETS``, else ``CONTROL``.

    Raises:
        ValueError: the share is outside [0, 1].
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"traffic share must be within [0, 1], got {share}")
    return CHALLENGER if bucket(salt, unit_id) < round(share * BUCKETS) else CONTROL
