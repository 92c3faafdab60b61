"""What serving holds between requests: the served model (followed by alias, swapped without a
restart) and the live catalog (stock, the model-free popular list, deal demand).

``ModelSlot`` is the one place that loads, swaps and hands out a model: holding a challenger next
to the champion is a second slot.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

from recops import registry
from recops.config import Settings
from recops.deals import demand_percentile
from recops.models.recommender import RecopsModel
from recops.profile import Catalog
from recops.serving.errors import NoModel
from recops.store import EventStore

if TYPE_CHECKING:
    from recops.services.packaging import Packaged

log = logging.getLogger("recops.serving")


class Served(NamedTuple):
    """A loaded model and its registry version, read together."""

    model: RecopsModel
    version: str


class ModelSlot:
    """One served model: a pinned registry version (batch scoring), a packaged model (a Bento: no
    registry), or whatever version an alias points to, re-checked by ``reload``. A version that fails
    to load leaves the previous one serving."""

    NO_MODEL = "no"  # how the reason starts when nothing is served (``why_none``)
    REGISTRY_UNREACHABLE = "the model registry is unreachable"  # how ``degraded`` starts when it is

    def __init__(self, settings: Settings, alias: str = registry.CHAMPION, pinned: str | None = None,
                 packaged: Packaged | None = None):
        self.settings = settings
        self.alias = alias
        self.pinned = pinned
        self.packaged = packaged
        self.source = f"bento:{packaged.tag}" if packaged else "registry"  # where the model comes from
        self._lock = threading.Lock()
        self._served: Served | None = None
        self.load_error: str | None = None
        self.loaded_at: float | None = None
        self.registered_at: float | None = None  # when the served version was registered (epoch s)
        self.degraded: str | None = None  # why what is served may be behind the registry (None: it is not)
        # the last version loaded from the registry, kept to serve when the registry is unreachable at start
        self.copy_dir = Path(settings.home) / "serving" / alias
        self.reload()

    def reload(self) -> None:
        """Load the alias's (or the pinned) version if it changed; on failure keep what is loaded."""
        if self.packaged is not None:
            self._load_packaged()
            return
        try:
            version = self.pinned or registry.alias_version(self.settings, self.alias)
            if version is not None and (self._served is None or version != self._served.version):
                model = registry.load_version(self.settings, version)
                registered = registry.registered_at(self.settings, version)
                self._serve(model, version, registered)
                log.info("serving %s version %s", self.alias, version)
                if not self.pinned:
                    threading.Thread(target=self._keep_copy, args=(model, version, registered), daemon=True,
                                     name="champion-copy").start()
            elif version is None and self._served is None:
                self.load_error = f"no model has the @{self.alias} alias yet"
            self.degraded = None
        except Exception as exc:  # the previous model, a local copy, or the fallback keeps serving
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load @%s", self.alias)
            if self._served is None and not self.pinned:
                self._load_copy()
            if self._served is not None:
                self.degraded = (f"{self.REGISTRY_UNREACHABLE} ({type(exc).__name__}): serving version "
                                 f"{self._served.version} without checking @{self.alias}")

    def _serve(self, model, version: str, registered: float) -> None:
        """Swap in a model: what ``get`` hands out from now on, with when it was loaded and registered."""
        with self._lock:
            self._served, self.loaded_at, self.load_error = Served(model, version), time.time(), None
            self.registered_at = registered

    def _keep_copy(self, model, version: str, registered: float) -> None:
        """Keep the loaded version on local disk: its model file first, then the pointer to it (each
        written aside and renamed), so a crash between leaves the previous copy whole."""
        try:
            self.copy_dir.mkdir(parents=True, exist_ok=True)
            name, me = f"model-v{version}.pkl", os.getpid()  # each worker writes aside under its own name
            model.save(self.copy_dir / f".{name}.{me}")
            (self.copy_dir / f".{name}.{me}").replace(self.copy_dir / name)
            meta = self.copy_dir / f".version.json.{me}"
            meta.write_text(json.dumps({"version": version, "file": name, "registered_at": registered,
                                        "saved_at": time.time()}))
            meta.replace(self.copy_dir / "version.json")
            for old in self.copy_dir.glob("model-v*.pkl"):
                if old.name != name:
                    old.unlink(missing_ok=True)
        except Exception:
            log.exception("could not keep a local copy of version %s", version)

    def _load_copy(self) -> None:
        """Serve the local copy of the last version loaded from the registry, if there is one."""
        try:
            meta = json.loads((self.copy_dir / "version.json").read_text())
            model = RecopsModel.load(self.copy_dir / meta["file"])
        except FileNotFoundError:
            return
        except Exception:
            log.exception("could not load the local copy in %s", self.copy_dir)
            return
        self._serve(model, str(meta["version"]), float(meta["registered_at"]))
        log.warning("the registry is unreachable: serving the local copy of version %s", meta["version"])

    def _load_packaged(self) -> None:
        """Load the packaged model once (it never changes); a failure is kept as the load error."""
        if self._served is not None:
            return
        try:
            self._serve(self.packaged.load(), self.packaged.version, self.packaged.registered_at)
            log.info("serving the packaged %s (registry version %s)", self.packaged.tag, self.packaged.version)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load the packaged %s", self.packaged.tag)

    def get(self) -> Served | None:
        """The model being served.

        Returns:
            The model and its version read together, or None while nothing is loaded.
        """
        with self._lock:
            return self._served

    def require(self) -> Served:
        """The model being served, for endpoints that cannot answer without one.

        Returns:
            The model and its version.

        Raises:
            NoModel: nothing is loaded (the message says why).
        """
        served = self.get()
        if served is None:
            raise NoModel(self.why_none())
        return served

    def why_none(self) -> str:
        """Why nothing is served.

        Returns:
            A sentence for a fallback reason or a 503's detail.
        """
        return f"{self.NO_MODEL} {self.alias} model: {self.load_error or 'not loaded'}"


class LiveCatalog:
    """The event store's catalog as of the last refresh: what is in stock now (trained models know
    the stock as of training), categories and titles, the model-free popular list, deal demand."""

    def __init__(self, store: EventStore):
        self.store = store
        self.refresh()

    def refresh(self) -> None:
        """Re-read the catalog and the recent counts (one query for both the popular list and demand)."""
        items = self.store.items()
        counts = self.store.popular_items(n=max(len(items), 100))
        recent = pd.Series(dict(counts), dtype=float)
        self.items = items
        self.known = set(items["item_id"])
        self.category = dict(zip(items["item_id"], items["category"]))
        self.out_of_stock = frozenset(items.loc[~items["in_stock"], "item_id"])
        self.popular = counts[:100]
        self.profile_catalog = Catalog.of(items)
        # deals: an item's demand is its percentile of recent events in the live catalog (none: 0)
        self.deal_info = items.set_index("item_id")[["price", "title", "category"]].assign(
            demand=lambda d: demand_percentile(recent.reindex(d.index).fillna(0.0)))

    def category_of(self, item_id: str) -> str:
        """The item's category, for a reason.

        Args:
            item_id: the item.

        Returns:
            Its category, or "the catalog" when the catalog does not know it.
        """
        return self.category.get(item_id, "the catalog")


class SegmentView:
    """The user segments the features flow fitted (``settings.segments_path``), re-read when the
    file changes; None until a fit exists."""

    def __init__(self, settings: Settings):
        self.path = settings.segments_path
        self.segments = None
        self._mtime: float | None = None
        self.refresh()

    def refresh(self) -> None:
        """Load the file when it is new or changed (a broken file leaves the previous fit)."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            from recops.segments import Segments

            try:
                self.segments, self._mtime = Segments.load(self.path), mtime
            except Exception:
                log.exception("could not read the segments at %s; keeping the previous ones", self.path)

    def of(self, user_id: str, profile_features: dict, events: pd.DataFrame, category: dict,
           user_row: dict | None) -> dict | None:
        """A user's segment: the fit's assignment, or, for a user the fit did not see, the nearest
        segment to their features now.

        Args:
            user_id: the user.
            profile_features: their profile features now (``recops.profile``).
            events: their events (for the category mix).
            category: item_id -> category.
            user_row: their users-table row, or None.

        Returns:
            The segment's summary row, or None without a fit.
        """
        seg = self.segments
        if seg is None:
            return None
        sid = seg.assignment.get(str(user_id))
        if sid is None:
            from recops.segments import segment_features

            cats = events["item_id"].map(category).dropna()
            shares = (cats.value_counts(normalize=True).to_frame().T.set_axis([user_id]) if len(cats)
                      else pd.DataFrame(index=[user_id]))
            users = pd.DataFrame([{"user_id": user_id, **(user_row or {})}]) if user_row else None
            x = segment_features(pd.DataFrame([{"user_id": user_id, **profile_features}]), shares, users,
                                 columns=seg.columns)
            sid = int(seg.predict(x)[0])
        return next(r for r in seg.summary if r["segment"] == sid)
