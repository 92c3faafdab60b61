"""Experiments as data: one row per experiment and one per change, in the event store's database.

At most one experiment runs at a time: a partial unique index on the running status enforces it
in the database itself (SQLite and PostgreSQL alike), so two concurrent starts cannot both win.
Every change (start, ramp, hold, stop, promote, roll back, each evaluation's decision) is a history
row with its time, reason and details.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from recops.experiments.assignment import CHALLENGER, variant
from recops.store import create_tables, metadata
from recops.vocabulary import EXPERIMENT_METHODS, EXPERIMENT_METRICS

RUNNING, STOPPED, PROMOTED, ROLLED_BACK = "running", "stopped", "promoted", "rolled_back"
STATUSES = (RUNNING, STOPPED, PROMOTED, ROLLED_BACK)
INTERLEAVED = "interleaved"  # the variant of a user served an interleaved list
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
GUARDRAILS = ("error_rate", "fallback_rate", "p99_latency_ms")

experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("control", sa.String(32), nullable=False, comment="registry version (@champion at start)"),
    sa.Column("challenger", sa.String(32), nullable=False, comment="registry version"),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("metric", sa.String(16), nullable=False),
    sa.Column("guardrails", sa.Text, nullable=False, comment="JSON list"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False, comment="UTC epoch seconds"),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("result", sa.Text, nullable=True, comment="JSON: the last evaluation"),
    sa.Index("one_running_experiment", "status", unique=True, sqlite_where=sa.text("status = 'running'"),
             postgresql_where=sa.text("status = 'running'")),
)

experiment_history = sa.Table(
    "experiment_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment", sa.String(64), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False, comment="UTC epoch seconds"),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=True, comment="JSON"),
)


class ExperimentError(ValueError):
    """A request that would break an experiment's rules; nothing was changed."""


@dataclass(frozen=True)
class Experiment:
    """One experiment as stored."""

    name: str
    control: str
    challenger: str
    method: str
    share: float
    salt: str
    metric: str
    guardrails: list[str]
    status: str
    started_at: float
    updated_at: float
    ended_at: float | None = None
    result: dict | None = field(default=None, compare=False)

    def variant_of(self, unit_id: str) -> str:
        """The variant a user (or anonymous session) sees: a pure function of the salt and the id.

        Args:
            unit_id: the user id, or the session id of an anonymous visitor.

        Returns:
            ``control``, ``challenger`` or, in an interleaving experiment, ``interleaved`` for the
            users in the challenger's share.
        """
        v = variant(self.salt, unit_id, self.share)
        return INTERLEAVED if v == CHALLENGER and self.method == "interleave" else v

    def as_dict(self) -> dict:
        """The experiment as JSON-ready data (the ``result`` excluded).

        Returns:
            Its fields by name.
        """
        return {"name": self.name, "control": self.control, "challenger": self.challenger, "method": self.method,
                "share": self.share, "salt": self.salt, "metric": self.metric, "guardrails": self.guardrails,
                "status": self.status, "started_at": self.started_at, "updated_at": self.updated_at,
                "ended_at": self.ended_at}


def _row(r) -> Experiment:
    return Experiment(name=r.name, control=r.control, challenger=r.challenger, method=r.method, share=float(r.share),
                      salt=r.salt, metric=r.metric, guardrails=json.loads(r.guardrails), status=r.status,
                      started_at=float(r.started_at), updated_at=float(r.updated_at),
                      ended_at=None if r.ended_at is None else float(r.ended_at),
                      result=json.loads(r.result) if r.result else None)


class ExperimentStore:
    """Experiments and their history behind the event store's engine."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        create_tables(engine, [experiments, experiment_history])

    # -- reads ----------------------------------------------------------------------------------
    def get(self, name: str) -> Experiment:
        """One experiment.

        Args:
            name: its name.

        Returns:
            The experiment.

        Raises:
            ExperimentError: no experiment has that name.
        """
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(experiments).where(experiments.c.name == name)).first()
        if r is None:
            raise ExperimentError(f"no experiment named {name!r}")
        return _row(r)

    def list(self) -> list[Experiment]:
        """Every experiment, newest first.

        Returns:
            The experiments.
        """
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(experiments).order_by(experiments.c.started_at.desc())).all()
        return [_row(r) for r in rows]

    def running(self) -> Experiment | None:
        """The running experiment.

        Returns:
            It, or None when none runs.
        """
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(experiments).where(experiments.c.status == RUNNING)).first()
        return _row(r) if r else None

    def history(self, name: str) -> list[dict]:
        """Every change of an experiment, oldest first.

        Args:
            name: the experiment.

        Returns:
            One dict per change: at, action, status, share, reason, details.
        """
        h = experiment_history.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(h.at, h.action, h.status, h.share, h.reason, h.details)
                                .where(h.experiment == name).order_by(h.id)).all()
        return [{"at": r.at, "action": r.action, "status": r.status, "share": r.share, "reason": r.reason,
                 "details": json.loads(r.details) if r.details else None} for r in rows]

    # -- writes ---------------------------------------------------------------------------------
    def start(self, name: str, control: str, challenger: str, method: str = "ab", share: float = 0.05,
              metric: str = "ctr", guardrails: list[str] | None = None, reason: str = "started",
              salt: str | None = None) -> Experiment:
        """Start an experiment (the versions are resolved by the caller).

        Args:
            name: a new name (letters, digits, ``_ . -``; at most 64).
            control: the control's registry version (the @champion's).
            challenger: the challenger's registry version.
            method: ``ab`` or ``interleave``.
            share: the challenger's traffic share, in [0, 1].
            metric: the primary metric: ``ctr``, ``conversion`` or ``revenue``.
            guardrails: the guardrails checked (default: all of ``GUARDRAILS``).
            reason: why, for the history.
            salt: the assignment's salt; None: a fresh random one.

        Returns:
            The running experiment.

        Raises:
            ExperimentError: a bad name, method, share, metric or guardrail, the challenger equal to
                the control, the name taken, or another experiment running.
        """
        guardrails = list(GUARDRAILS if guardrails is None else guardrails)
        if not NAME.match(name or ""):
            raise ExperimentError(f"experiment name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
        if method not in EXPERIMENT_METHODS:
            raise ExperimentError(f"method {method!r}: choose one of {list(EXPERIMENT_METHODS)}")
        _check_share(share)
        if metric not in EXPERIMENT_METRICS:
            raise ExperimentError(f"metric {metric!r}: choose one of {list(EXPERIMENT_METRICS)}")
        if set(guardrails) - set(GUARDRAILS):
            raise ExperimentError(f"unknown guardrails {sorted(set(guardrails) - set(GUARDRAILS))}; "
                                  f"known: {list(GUARDRAILS)}")
        if str(control) == str(challenger):
            raise ExperimentError(f"the challenger is the control (version {control}): nothing to compare")
        now = time.time()
        row = {"name": name, "control": str(control), "challenger": str(challenger), "method": method,
               "share": float(share), "salt": salt or secrets.token_hex(8), "metric": metric,
               "guardrails": json.dumps(guardrails), "status": RUNNING, "started_at": now, "updated_at": now}
        try:
            with self.engine.begin() as conn:
                if conn.execute(sa.select(experiments.c.name).where(experiments.c.name == name)).first():
                    raise ExperimentError(f"an experiment named {name!r} exists already: choose another name")
                other = conn.execute(sa.select(experiments.c.name).where(experiments.c.status == RUNNING)).first()
                if other:
                    raise ExperimentError(f"experiment {other.name!r} is running: stop it first "
                                          "(one experiment at a time)")
                conn.execute(sa.insert(experiments), row)
                self._log(conn, name, "start", RUNNING, share, reason,
                          {"control": control, "challenger": challenger, "method": method, "metric": metric})
        except sa.exc.IntegrityError as exc:  # a concurrent start won the race
            raise ExperimentError("another experiment started at the same time: one experiment at a time") from exc
        return self.get(name)

    def ramp(self, name: str, share: float, reason: str, action: str = "ramp",
             details: dict | None = None) -> Experiment:
        """Change a running experiment's traffic share.

        Args:
            name: the experiment.
            share: the new share, in [0, 1].
            reason: why, for the history.
            action: the history's action (``ramp``, or ``rollback`` at share 0 by the policy).
            details: evidence for the history.

        Returns:
            The experiment after the change.

        Raises:
            ExperimentError: no such experiment, it is not running, or the share is outside [0, 1].
        """
        _check_share(share)
        with self.engine.begin() as conn:
            exp = self._running(conn, name)
            conn.execute(sa.update(experiments).where(experiments.c.name == name)
                         .values(share=float(share), updated_at=time.time()))
            self._log(conn, name, action, exp.status, share, reason, details)
        return self.get(name)

    def finish(self, name: str, status: str, reason: str, share: float | None = None,
               details: dict | None = None) -> Experiment:
        """End a running experiment.

        Args:
            name: the experiment.
            status: ``stopped``, ``promoted`` or ``rolled_back``.
            reason: why, for the history.
            share: the share to leave it at (a roll back sets 0); None: unchanged.
            details: evidence for the history.

        Returns:
            The experiment after the change.

        Raises:
            ExperimentError: no such experiment, it is not running, or ``status`` is not an end.
        """
        if status not in (STOPPED, PROMOTED, ROLLED_BACK):
            raise ExperimentError(f"status {status!r}: an experiment ends as stopped, promoted or rolled_back")
        if share is not None:
            _check_share(share)
        with self.engine.begin() as conn:
            exp = self._running(conn, name)
            now = time.time()
            new_share = exp.share if share is None else float(share)
            conn.execute(sa.update(experiments).where(experiments.c.name == name)
                         .values(status=status, share=new_share, updated_at=now, ended_at=now))
            self._log(conn, name, {STOPPED: "stop", PROMOTED: "promote", ROLLED_BACK: "rollback"}[status], status,
                      new_share, reason, details)
        return self.get(name)

    def note(self, name: str, action: str, reason: str, details: dict | None = None) -> None:
        """Record an evaluation's decision that changes nothing (continue, hold) in the history.

        Args:
            name: the experiment.
            action: e.g. ``continue`` or ``hold``.
            reason: why.
            details: the evidence.
        """
        exp = self.get(name)
        with self.engine.begin() as conn:
            self._log(conn, name, action, exp.status, exp.share, reason, details)

    def save_result(self, name: str, result: dict) -> None:
        """Keep an evaluation's figures with the experiment (``status`` shows the last one).

        Args:
            name: the experiment.
            result: the figures, JSON-ready.
        """
        with self.engine.begin() as conn:
            conn.execute(sa.update(experiments).where(experiments.c.name == name)
                         .values(result=json.dumps(result, default=str)))

    def _running(self, conn, name: str) -> Experiment:
        r = conn.execute(sa.select(experiments).where(experiments.c.name == name)).first()
        if r is None:
            raise ExperimentError(f"no experiment named {name!r}")
        if r.status != RUNNING:
            raise ExperimentError(f"experiment {name!r} is {r.status}, not running: nothing to change")
        return _row(r)

    @staticmethod
    def _log(conn, name: str, action: str, status: str, share: float, reason: str, details: dict | None) -> None:
        conn.execute(sa.insert(experiment_history), {
            "experiment": name, "at": time.time(), "action": action, "status": status, "share": float(share),
            "reason": reason, "details": json.dumps(details, default=str) if details is not None else None})


def _check_share(share: float) -> None:
    if not isinstance(share, (int, float)) or not 0.0 <= float(share) <= 1.0:
        raise ExperimentError(f"traffic share must be within [0, 1], got {share}")

