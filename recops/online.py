"""The online half of the feature pipeline: recompute users' features and sessions' state, push them.

It runs ``recops.features.user_features`` and ``session_states``, the functions that build the
offline tables, on the events of the touched users and sessions from the event store (one query),
so online and offline values agree by construction.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque

import pandas as pd

from recops.features import session_states, user_features, user_recent
from recops.featurestore import FeatureStoreClient
from recops.store import EventStore

log = logging.getLogger("recops.online")


def refresh(store: EventStore, fs: FeatureStoreClient, user_ids, session_ids, items: pd.DataFrame,
            as_of: pd.Timestamp | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recompute and push the online features of ``user_ids`` as of ``as_of`` (default: now) and
    the state of ``session_ids``; returns both frames. Implicit-rating semantics: ``fs.settings``.

    Args:
        store: the event store the touched users' and sessions' events are read from.
        fs: the feature store the results are written to (user features, recent items, session states).
        user_ids: users to refresh (iterable; empty/None ids and duplicates are dropped).
        session_ids: sessions to refresh (iterable; empty/None ids and duplicates are dropped).
        items: the catalog (``item_id``, ``category``) for category affinity and session categories.
        as_of: the time the user features are computed at; ``None``: now (UTC).

    Returns:
        ``(user features, session states)`` as pushed, each empty when there was nothing to refresh.
    """
    users = sorted({u for u in user_ids if u})
    sessions = sorted({s for s in session_ids if s})
    if not users and not sessions:
        return pd.DataFrame(), pd.DataFrame()
    as_of = as_of if as_of is not None else pd.Timestamp.now(tz="UTC")
    events = store.events_of(users, sessions)
    feats = pd.DataFrame()
    if users:
        mine, points = events[events["user_id"].isin(users)], pd.DataFrame({"user_id": users, "as_of": as_of})
        feats = user_features(mine, points, items)
        fs.push_user(feats)
        fs.push_recent(user_recent(mine, points, (fs.settings.event_types, fs.settings.decay_half_life_days)))
    states = pd.DataFrame()
    if sessions:
        cat = items.set_index("item_id")["category"] if not items.empty else None
        states = session_states(events[events["session_id"].isin(sessions)], cat)
        fs.push_sessions(states)
    return feats, states


class Refresher:
    """The online half of /track, off the request path and out of the server's process: a child
    process recomputes and writes the online state of the users and sessions that /track touched.

    /track stores its events (durable) and hands the ids here, so its latency is the insert's; in
    its own process the refresh's pandas work does not hold the server's GIL. Ids queued while a
    refresh runs are merged into the next one, so under load one refresh covers many requests. A
    read that needs a user's or session's online state (``wait``) blocks until every refresh queued
    for it before the read has landed: the next request reflects the event. The child is the only
    writer of the online store. It starts on the first submit (batch scoring never needs it).
    """

    def __init__(self, settings):
        self.settings = settings
        self._ctx = mp.get_context("spawn")  # the server has threads: never fork it
        self._lock = threading.Lock()
        self._queued: dict[tuple[str, str], int] = {}  # ("u"|"s", id) -> sequence number it was queued at
        self._seq = 0
        self._sent: deque[tuple[int, float]] = deque()  # (sequence number, monotonic time) of submits not landed
        self._proc = None

    def _start(self) -> None:
        """Start the child; after a crash, a new one picks up where the dead one stopped and is
        handed again every id queued since its last finished refresh."""
        ctx = self._ctx
        done = self._done.value if self._proc is not None else 0
        lost = [k for k, v in self._queued.items() if v > done]
        self._q = ctx.Queue()
        self._done, self._count = ctx.Value("q", done), ctx.Value("q", 0)
        self._error = ctx.Array("c", 500)
        self._cond = ctx.Condition()
        self._proc = ctx.Process(target=_refresh_loop, name="recops-online-refresher", daemon=True,
                                 args=(self.settings, self._q, self._done, self._count, self._error, self._cond,
                                       os.getpid()))
        self._proc.start()
        if lost:
            self._q.put((self._seq, [i for kind, i in lost if kind == "u"], [i for kind, i in lost if kind == "s"]))

    def resume(self, store: EventStore) -> int:
        """Refresh what a crash left behind: the users and sessions whose pending mark is still in the
        event store (``refresh_pending``: written with their events, cleared when their refresh lands).

        Args:
            store: the event store.

        Returns:
            How many users and sessions were queued.
        """
        users, sessions = store.pending_refreshes()
        if users or sessions:
            log.info("resuming the online refresh of %d users and %d sessions", len(users), len(sessions))
            self.submit(users, sessions)
        return len(users) + len(sessions)

    def submit(self, users, sessions) -> None:
        """Queue a refresh of these users and sessions (non-blocking; starts or restarts the child).

        Args:
            users: user ids whose online features to recompute.
            sessions: session ids whose state to recompute.
        """
        with self._lock:
            if not self._alive():
                self._start()
            self._seq += 1
            for kind, ids in (("u", users), ("s", sessions)):
                for i in ids:
                    self._queued[(kind, i)] = self._seq
            self._q.put((self._seq, list(users), list(sessions)))
            self._sent.append((self._seq, time.monotonic()))
            self._forget_landed()
            if len(self._queued) > 100_000:  # forget what has landed
                done = self._done.value
                self._queued = {k: v for k, v in self._queued.items() if v > done}

    def _alive(self) -> bool:
        """Whether the child runs. ``is_alive`` alone is not enough: when something else in the
        server reaps the dead child first (waitpid on any child), it keeps answering True."""
        if self._proc is None or not self._proc.is_alive():
            return False
        try:
            os.kill(self._proc.pid, 0)
            with open(f"/proc/{self._proc.pid}/stat") as f:
                return f.read().rsplit(") ", 1)[1][:1] != "Z"  # a zombie: dead, not reaped yet
        except (ProcessLookupError, FileNotFoundError):
            return False
        except OSError:  # no /proc (not Linux): trust is_alive
            return True

    def wait(self, user: str | None = None, session: str | None = None, timeout: float = 10.0) -> bool:
        """Block until the refreshes queued for ``user``/``session`` have landed (False: timed out).

        Args:
            user: the user whose online state is about to be read; ``None``: no user.
            session: the session whose online state is about to be read; ``None``: no session.
            timeout: the longest wait, in seconds.

        Returns:
            True when nothing queued for them is outstanding (at once if nothing was ever queued),
            False when ``timeout`` passed first.
        """
        with self._lock:
            target = max(self._queued.get(("u", user), 0), self._queued.get(("s", session), 0))
        if not target or self._done.value >= target:
            return True
        with self._cond:
            return self._cond.wait_for(lambda: self._done.value >= target, timeout)

    def is_pending(self, user: str | None = None, session: str | None = None) -> bool:
        """Whether a refresh queued for ``user``/``session`` has not landed yet.

        Args:
            user: a user id; ``None``: no user.
            session: a session id; ``None``: no session.

        Returns:
            True when a refresh queued for either has not finished yet.
        """
        with self._lock:
            target = max(self._queued.get(("u", user), 0), self._queued.get(("s", session), 0))
        return bool(target) and self._done.value < target

    @property
    def pid(self) -> int | None:
        """The refresher process's id (None before the first submit starts it)."""
        return self._proc.pid if self._proc is not None else None

    def pending(self) -> int:
        """How many submitted refreshes have not landed yet.

        Returns:
            Submits not yet covered by a finished refresh cycle (0 before the first submit).
        """
        return 0 if self._proc is None else self._seq - self._done.value

    def lag(self) -> float:
        """How long the oldest submitted refresh that has not landed has waited.

        Returns:
            Seconds (0.0 when nothing is outstanding).
        """
        if self._proc is None:
            return 0.0
        with self._lock:
            self._forget_landed()
            return time.monotonic() - self._sent[0][1] if self._sent else 0.0

    def _forget_landed(self) -> None:
        """Drop the submit times of refreshes that have landed (under ``_lock``)."""
        done = self._done.value
        while self._sent and self._sent[0][0] <= done:
            self._sent.popleft()

    @property
    def refreshes(self) -> int:
        """Refresh cycles the current child has run (each may cover many submits; 0 before the first)."""
        return 0 if self._proc is None else self._count.value

    @property
    def last_error(self) -> str | None:
        """The failure of the latest refresh cycle (``Type: message``), None when it succeeded or none ran."""
        return (self._error.value.decode(errors="replace") or None) if self._proc is not None else None

    def close(self) -> None:
        """Stop the child after it drains its queue; terminate it when that takes over 10 seconds."""
        if self._proc is not None and self._proc.is_alive():
            self._q.put(None)
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.terminate()


def watch_parent(parent: int, before_exit=None, stop: threading.Event | None = None) -> None:
    """End this process when its parent is gone (a kill -9 of it leaves nobody to stop this one); a
    thread's loop.

    Args:
        parent: the parent's pid when the watch started.
        before_exit: called first (e.g. writing what is pending); None: nothing.
        stop: set it to end the watch; None: it runs as long as the process.
    """
    stop = stop or threading.Event()
    while not stop.wait(0.5):
        if os.getppid() != parent:
            try:
                if before_exit is not None:
                    before_exit()
            finally:
                os._exit(0)


def _refresh_loop(settings, q, done, count, error, cond, parent: int | None = None) -> None:
    """The refresher process: drain the queue, refresh every id in it at once, report, repeat."""
    if parent is not None:
        threading.Thread(target=watch_parent, args=(parent,), name="orphan-watch", daemon=True).start()
    store, fs = EventStore(settings.event_store_uri), FeatureStoreClient(settings)
    items, items_at = store.items(), time.monotonic()
    fs.use_wal()
    while True:
        batch = [q.get()]
        while True:
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                break
        stop = any(b is None for b in batch)
        work = [b for b in batch if b is not None]
        if work:
            if time.monotonic() - items_at > settings.reload_interval_seconds:
                items, items_at = store.items(), time.monotonic()
            users = sorted({u for _, us, _ in work for u in us})
            sessions = sorted({s for _, _, ss in work for s in ss})
            try:
                marks = store.pending_marks(users, sessions)  # before the events: see EventStore.pending_marks
                refresh(store, fs, users, sessions, items)
                store.clear_pending(marks)
                error.value = b""
            except Exception as exc:  # the events are stored; the next refresh of these ids catches up
                log.exception("online refresh failed")
                error.value = f"{type(exc).__name__}: {exc}".encode()[:499]
            with cond:
                done.value = max(seq for seq, _, _ in work)
                count.value += 1
                cond.notify_all()
        if stop:
            store.dispose()
            return
