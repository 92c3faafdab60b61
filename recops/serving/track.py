"""``/track`` and ``/track/batch``: persist first (durable before the 2xx; a repeated ``event_id`` is
stored once), then queue the touched users and sessions for the online refresh
(``recops.online.Refresher``), so the next request reflects the events."""

from __future__ import annotations

import json
import time

import pandas as pd

from recops.online import Refresher
from recops.schema import make_event_id
from recops.services.schemas import TrackEvent, TrackResponse
from recops.serving.errors import StoreDown, is_store_down
from recops.serving.state import LiveCatalog
from recops.store import EventStore

FUTURE_SLACK_SECONDS = 300  # a sent time up to this far ahead of the server's is taken as is


class Tracking:
    """Stores events and hands their ids to the refresher."""

    def __init__(self, store: EventStore, catalog: LiveCatalog, refresher: Refresher):
        self.store, self.catalog, self.refresher = store, catalog, refresher

    def track(self, evs: list[TrackEvent]) -> TrackResponse:
        """Store validated events, then queue their users' and sessions' online refresh.

        Args:
            evs: the events (already validated by the request schema).

        Returns:
            How many were accepted, stored and duplicates, items the catalog does not know, the users
            and sessions whose online state is being refreshed, and a warning when the last refresh failed.
        """
        now = time.time()
        rows = [event_row(e, now) for e in evs]
        ahead = sum(is_ahead(e, now) for e in evs)
        users = sorted({r["user_id"] for r in rows if r["user_id"]})
        sessions = sorted({r["session_id"] for r in rows if r["session_id"]})
        # the refresh they call for is recorded with them: a crash before it lands cannot forget it
        try:
            stored = len(self.store.insert_events(rows, pending=(users, sessions)))
        except Exception as exc:
            if is_store_down(exc):
                raise StoreDown(f"the event store is unreachable ({type(exc).__name__}): nothing was stored; "
                                "send the events again") from exc
            raise
        known = self.catalog.known
        unknown = sorted({r["item_id"] for r in rows} - known) if known else []
        self.refresher.submit(users, sessions)
        err = self.refresher.last_error
        warnings = [f"events stored; the last online refresh failed ({err}), the next one retries"] if err else []
        if ahead:
            warnings.append(f"{ahead} event(s) had a timestamp more than {FUTURE_SLACK_SECONDS} s ahead of the "
                            "server's clock: stored at the server's time, the sent time kept in context.sent_timestamp")
        return TrackResponse(accepted=len(rows), stored=stored, duplicates=len(rows) - stored, unknown_items=unknown,
                             online_updated=users, sessions_updated=sessions, warning="; ".join(warnings) or None)


def is_ahead(e: TrackEvent, now: float) -> bool:
    """Whether an event's sent time is too far ahead of the server's clock to be taken as is."""
    return e.timestamp is not None and e.timestamp.timestamp() > now + FUTURE_SLACK_SECONDS


def event_row(e: TrackEvent, now: float) -> dict:
    """A validated event as an event-store row (no pandas frame on the /track path: it cost 6 ms).

    Args:
        e: the event.
        now: the ingestion time (epoch seconds), also the event's time when it has none.

    Returns:
        The row, with a deterministic ``event_id`` when the caller sent none.
    """
    sent = e.timestamp.timestamp() if e.timestamp else now
    # the list an event came from tells it apart too: one click on the same item in each of two lists is two clicks
    extra = e.session_id if e.request_id is None else f"{e.session_id}|{e.request_id}"
    # the id from the time as sent: a retry of an event from a fast clock is the same event
    event_id = e.event_id or make_event_id(e.user_id, e.item_id, e.event_type, pd.Timestamp(sent, unit="s", tz="UTC"),
                                           extra)
    context = e.context
    ts = sent
    if is_ahead(e, now):  # a client's fast clock: nothing may happen in the future of the store
        ts, context = now, {**(context or {}), "sent_timestamp": e.timestamp.isoformat()}
    return {"event_id": event_id, "user_id": e.user_id, "item_id": e.item_id, "event_type": e.event_type,
            "timestamp": ts, "session_id": e.session_id, "value": e.value,
            "context": json.dumps(context, sort_keys=True) if context else None, "ingested_at": now,
            "request_id": e.request_id}
