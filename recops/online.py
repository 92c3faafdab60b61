"""The online half of the feature pipeline: recompute users' features and sessions' state, push them.

It runs ``recops.features.user_features`` and ``session_states``, the functions that build the
offline tables, on the events of the touched users and sessions from the event store (one query),
so online and offline values agree by construction.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from pathlib import Path

import pandas as pd

from recops.features import session_states, user_features, user_recent
from recops.featurestore import FeatureStoreClient
from recops.store import EventStore

log = logging.getLogger("recops.online")

RETRY_SECONDS = 2.0  # after a failed refresh (the online store down), what is pending is retried this often
POLL_SECONDS = 0.05  # how often the refresher looks for pending marks another worker's /track left
OWNER_CHECK_SECONDS = 1.0  # how often a worker tries to become the writer (the writer: checks its child)
BATCH = 5000  # the most users and sessions one refresh cycle takes


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
    """The online half of /track, off the request path and out of the server's processes: one child
    process per server recomputes and writes the online state of the users and sessions that /track
    marked pending.

    The queue is the event store's ``refresh_pending`` table: /track writes a mark with its events (one
    transaction), the refresher takes the marks, refreshes those ids from their events and clears the
    marks that did not change meanwhile. So it does not matter which worker answered the /track, a
    crash forgets nothing, and a read is fresh without waiting: while an id is marked, its features or
    session are computed from the event store (``is_pending``), else read from the online store.

    One writer: of a server's workers, the one holding an exclusive lock on ``{home}/serving/
    online-refresher.lock`` runs the child; the others try to take the lock every second, so when that
    worker dies another one takes over. ``submit`` from the writer's own worker wakes the child at once;
    otherwise it finds the marks within ``POLL_SECONDS``. In its own process the refresh's pandas work
    does not hold a worker's GIL. Batch scoring never starts it.
    """

    def __init__(self, settings, store: EventStore):
        self.settings, self.store = settings, store
        self._ctx = mp.get_context("spawn")  # the server has threads: never fork it
        self._lock = threading.Lock()
        self._proc = None
        self._q = None
        self._lockfile = None  # open while this worker is the writer
        self._stop = threading.Event()
        self.status_path = Path(settings.home) / "serving" / "online-refresher.json"

    def start(self) -> None:
        """Take part in running the refresher: become the writer when nobody is (a thread that keeps
        trying), and then keep its child running. Returns at once."""
        self._stop.clear()
        threading.Thread(target=self._own, name="online-refresher-owner", daemon=True).start()

    def _own(self) -> None:
        while True:
            try:
                with self._lock:
                    if self._lockfile is None:
                        self._take_lock()
                    if self._lockfile is not None and not self._alive():
                        self._start_child()
            except Exception:  # a full disk, a read-only home: the next check tries again
                log.exception("could not start the online refresher")
            if self._stop.wait(OWNER_CHECK_SECONDS):
                return

    def _take_lock(self) -> None:
        path = self.status_path.with_name("online-refresher.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")  # noqa: SIM115 - held open as long as this worker is the writer
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return
        self._lockfile = f
        log.info("this worker (pid %d) runs the online refresher", os.getpid())

    def _start_child(self) -> None:
        """Start (or, after a crash, restart) the child; what the dead one left is still marked pending."""
        self._q = self._ctx.Queue()
        self._proc = self._ctx.Process(target=_refresh_loop, name="recops-online-refresher", daemon=True,
                                       args=(self.settings, self._q, str(self.status_path), os.getpid()))
        self._proc.start()

    def submit(self, users, sessions) -> None:
        """Wake the refresher for these users and sessions, whose marks /track stored with their events
        (non-blocking; without a wake-up the refresher finds them within ``POLL_SECONDS``).

        Args:
            users: user ids whose online features to recompute.
            sessions: session ids whose state to recompute.
        """
        q = self._q
        if q is not None and (users or sessions):
            try:
                q.put_nowait(True)
            except (ValueError, OSError):  # the child was replaced meanwhile: it polls anyway
                pass

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

    def is_pending(self, user: str | None = None, session: str | None = None) -> bool:
        """Whether an event of ``user``/``session`` is stored whose refresh has not landed yet.

        Args:
            user: a user id; ``None``: no user.
            session: a session id; ``None``: no session.

        Returns:
            True when either is marked pending in the event store.
        """
        return self.store.is_pending(user, session)

    def wait(self, user: str | None = None, session: str | None = None, timeout: float = 10.0) -> bool:
        """Block until nothing is pending for ``user``/``session`` (False: timed out).

        Args:
            user: the user whose online state is about to be read; ``None``: no user.
            session: the session whose online state is about to be read; ``None``: no session.
            timeout: the longest wait, in seconds.

        Returns:
            True when nothing is pending for them, False when ``timeout`` passed first.
        """
        deadline = time.monotonic() + timeout
        while self.is_pending(user, session):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    @property
    def pid(self) -> int | None:
        """The refresher process's id when this worker runs it (None otherwise)."""
        return self._proc.pid if self._proc is not None else None

    def pending(self) -> int:
        """How many users and sessions have events whose refresh has not landed.

        Returns:
            The marks in the event store (0 when it cannot be read: the health check must answer).
        """
        return self._backlog()[0]

    def lag(self) -> float:
        """How long the oldest refresh that has not landed has waited.

        Returns:
            Seconds since the oldest mark's events were stored (0.0 when nothing is outstanding).
        """
        oldest = self._backlog()[1]
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    def _backlog(self) -> tuple[int, float | None]:
        try:
            return self.store.pending_count()
        except Exception:  # the event store is away: /health and /metrics answer anyway
            log.exception("could not count the pending refreshes")
            return 0, None

    def _status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def refreshes(self) -> int:
        """Refresh cycles the server's refresher has run (each may cover many ids; 0 before the first)."""
        return int(self._status().get("cycles", 0))

    @property
    def last_error(self) -> str | None:
        """The failure of the refresher's latest cycle (``Type: message``), None when it succeeded or none ran."""
        return self._status().get("error")

    def close(self) -> None:
        """Stop the child after its current cycle (terminate it when that takes over 10 seconds) and
        give up the writer's lock."""
        self._stop.set()
        with self._lock:
            if self._proc is not None and self._proc.is_alive():
                self._q.put(None)
                self._proc.join(timeout=10)
                if self._proc.is_alive():
                    self._proc.terminate()
            if self._lockfile is not None:
                self._lockfile.close()
                self._lockfile = None


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


def _refresh_loop(settings, q, status_path: str, parent: int | None = None) -> None:
    """The refresher process: take the pending marks, refresh those ids, clear the marks, repeat."""
    if parent is not None:
        threading.Thread(target=watch_parent, args=(parent,), name="orphan-watch", daemon=True).start()
    store, fs = EventStore(settings.event_store_uri), FeatureStoreClient(settings)
    items, items_at = store.items(), time.monotonic()
    fs.use_wal()
    status = {"pid": os.getpid(), "cycles": 0, "error": None}
    _write_status(status_path, status)
    failed = False
    while True:
        stop = False
        try:  # woken by a submit, or after a while: another worker's /track only leaves its marks
            stop = q.get(timeout=RETRY_SECONDS if failed else POLL_SECONDS) is None
            while not stop:
                stop = q.get_nowait() is None
        except queue.Empty:
            pass
        try:
            marks = store.pending_marks(limit=BATCH)  # before the events: see EventStore.pending_marks
            if marks:
                if time.monotonic() - items_at > settings.reload_interval_seconds:
                    items, items_at = store.items(), time.monotonic()
                refresh(store, fs, [m["id"] for m in marks if m["kind"] == "u"],
                        [m["id"] for m in marks if m["kind"] == "s"], items)
                store.clear_pending(marks)
                status["cycles"] += 1
                status["error"], failed = None, False
                _write_status(status_path, status)
        except Exception as exc:  # the events are stored and still marked: retried until it lands
            if not failed:
                log.exception("online refresh failed; retrying every %s s", RETRY_SECONDS)
            status["error"], failed = f"{type(exc).__name__}: {exc}"[:499], True
            _write_status(status_path, status)
        if stop:
            store.dispose()
            return


def _write_status(path: str, status: dict) -> None:
    """The refresher's state for every worker to read (written whole, then renamed into place)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, path)
