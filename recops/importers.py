"""Importers: real public data sets and generic CSV/Parquet files into the recops schema.

Every importer returns a ``Dataset`` whose frames are normalized (``recops.schema``); rows that
cannot be parsed keep nulls so that validation quarantines them with a reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recops.schema import normalize_events, normalize_items, normalize_users
from recops.vocabulary import CLICK


@dataclass
class Dataset:
    events: pd.DataFrame
    items: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["item_id"]))
    users: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["user_id"]))


DELIMITERS = (",", "\t", ";", "|")


def _read_table(path: Path) -> pd.DataFrame:
    """A Parquet, JSON-lines or delimited text file; a text file's delimiter is the one of
    ``DELIMITERS`` its header line holds most of (click logs often come tab-separated)."""
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True)
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline()
    sep = max(DELIMITERS, key=header.count)
    return pd.read_csv(path, sep=sep if header.count(sep) else ",")


# common spellings of recops' columns in public logs (after camelCase -> snake_case, lower case)
ALIASES = {"session": "session_id", "sessionid": "session_id", "user": "user_id", "userid": "user_id",
           "customer_id": "user_id", "item": "item_id", "itemid": "item_id", "product_id": "item_id",
           "time": "timestamp", "ts": "timestamp", "event_time": "timestamp", "event": "event_type",
           "type": "event_type", "action": "event_type"}
RECOPS_COLUMNS = ("user_id", "session_id", "item_id", "event_type", "timestamp", "value", "context", "event_id")


def _guess_columns(columns: list[str], taken: set[str]) -> dict[str, str]:
    """File column -> recops column for the columns a file spells its own way (``SessionId``,
    ``ItemId``, ``Time``), where the recops column is not there already."""
    out = {}
    for c in columns:
        snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", str(c)).strip().lower().replace(" ", "_")
        target = snake if snake in RECOPS_COLUMNS else ALIASES.get(snake)
        if target and target not in taken and target not in out.values():
            out[c] = target
    return out


def _epoch_unit(ts: pd.Series) -> str | None:
    """The unit of numeric timestamps by their size (seconds, milliseconds, micro- or nanoseconds
    since 1970), or None when they are not numbers."""
    if not pd.api.types.is_numeric_dtype(ts) or ts.dropna().empty:
        return None
    m = float(ts.dropna().abs().median())
    return "s" if m < 1e11 else "ms" if m < 1e14 else "us" if m < 1e17 else "ns"


def load_movielens(path: str | Path) -> Dataset:
    """MovieLens 100K: every rating is a ``rate`` event with its 1-5 value; one session per user-day.

    Args:
        path: the unpacked ml-100k directory (u.data, u.item, u.genre, u.user).

    Returns:
        The events; items with the primary genre as category, all genres as description and the
        release date as created_at; users with region ``zip`` + the first digit of their zip code.
    """
    p = Path(path)
    r = pd.read_csv(p / "u.data", sep="\t", names=["user_id", "item_id", "rating", "ts"])
    ts = pd.to_datetime(r["ts"], unit="s", utc=True)
    events = pd.DataFrame({
        "event_id": "ml-" + r["user_id"].astype(str) + "-" + r["item_id"].astype(str),
        "user_id": r["user_id"].astype(str),
        "item_id": r["item_id"].astype(str),
        "event_type": "rate",
        "timestamp": ts,
        "session_id": r["user_id"].astype(str) + "-" + ts.dt.strftime("%Y%m%d"),
        "value": r["rating"].astype(float),
    })
    genres = pd.read_csv(p / "u.genre", sep="|", names=["genre", "idx"]).dropna()["genre"].tolist()
    cols = ["item_id", "title", "release", "video", "url", *genres]
    it = pd.read_csv(p / "u.item", sep="|", names=cols, encoding="latin-1")
    flags = it[genres].to_numpy()
    # primary genre: the first flagged one, skipping "unknown" where another is set
    order = [g for g in genres if g != "unknown"] + ["unknown"]
    primary = [next((g for g in order if row[genres.index(g)] == 1), "unknown") for row in flags]
    items = pd.DataFrame({
        "item_id": it["item_id"].astype(str),
        "category": primary,
        "title": it["title"],
        "description": [" ".join(g for g, f in zip(genres, row) if f == 1) for row in flags],
        "created_at": pd.to_datetime(it["release"], format="%d-%b-%Y", errors="coerce", utc=True),
    })
    u = pd.read_csv(p / "u.user", sep="|", names=["user_id", "age", "gender", "occupation", "zip"])
    users = pd.DataFrame({
        "user_id": u["user_id"].astype(str),
        "age": u["age"],
        "gender": u["gender"],
        "region": "zip" + u["zip"].astype(str).str[0],
    })
    return Dataset(normalize_events(events), normalize_items(items), normalize_users(users))


def load_online_retail(path: str | Path) -> Dataset:
    """UCI Online Retail: invoice lines are purchases (cancellations: ``remove_from_cart``).

    An invoice is a session; lines without a CustomerID stay anonymous (session only). The category
    is the product noun, the last word of the description (HOLDER, BAG, MUG, ...).

    Args:
        path: the CSV file, or a directory holding ``online_retail_sample_20k.csv``.

    Returns:
        Events with the unit price as value and country and quantity as context; items priced at their
        median unit price; users with their most frequent country as region.
    """
    p = Path(path)
    f = p if p.is_file() else p / "online_retail_sample_20k.csv"
    df = pd.read_csv(f, dtype={"InvoiceNo": str, "StockCode": str, "CustomerID": "string"})
    cancel = df["InvoiceNo"].str.startswith("C") | (df["Quantity"] < 0)
    cust = df["CustomerID"].str.replace(r"\.0$", "", regex=True)
    ts = pd.to_datetime(df["InvoiceDate"], utc=True, errors="coerce")
    events = pd.DataFrame({
        "event_id": "or-" + df.index.astype(str) + "-" + df["InvoiceNo"].astype(str),
        "user_id": cust.astype(object).where(cust.notna(), None),
        "item_id": df["StockCode"],
        "event_type": np.where(cancel, "remove_from_cart", "purchase"),
        "timestamp": ts,
        "session_id": df["InvoiceNo"].str.lstrip("C"),
        "value": df["UnitPrice"].astype(float),
        "context": [json.dumps({"country": c, "quantity": int(q)}) for c, q in zip(df["Country"], df["Quantity"])],
    })
    desc = df["Description"].fillna("").astype(str).str.strip()
    items = (
        pd.DataFrame({"item_id": df["StockCode"], "title": desc, "description": desc, "price": df["UnitPrice"]})
        .groupby("item_id", as_index=False)
        .agg(title=("title", "last"), description=("description", "last"), price=("price", "median"))
    )
    items["category"] = items["title"].str.split().str[-1].fillna("unknown").str.upper().replace("", "unknown")
    countries = pd.DataFrame({"user_id": cust, "region": df["Country"]}).dropna()
    users = countries.groupby("user_id", as_index=False)["region"].agg(lambda s: s.mode().iat[0])
    return Dataset(normalize_events(events), normalize_items(items), normalize_users(users))


OTTO_TYPES = {"clicks": "click", "carts": "add_to_cart", "orders": "purchase"}


def load_otto(path: str | Path) -> Dataset:
    """OTTO jsonl: anonymous sessions; events carry a session_id and no user_id.

    Args:
        path: the jsonl file (a session a line: ``session``, ``events`` of aid, ts in ms, type), or a
            directory holding ``train_sample.jsonl``.

    Returns:
        The events only (clicks, carts, orders as click, add_to_cart, purchase); no items, no users.
    """
    p = Path(path)
    f = p if p.is_file() else p / "train_sample.jsonl"
    rows = []
    with open(f) as fh:
        for line in fh:
            s = json.loads(line)
            for e in s["events"]:
                rows.append((str(s["session"]), str(e["aid"]), OTTO_TYPES.get(e["type"], e["type"]), e["ts"]))
    df = pd.DataFrame(rows, columns=["session_id", "item_id", "event_type", "ts"])
    events = pd.DataFrame({
        "event_id": ("otto-" + df["session_id"] + "-" + df["item_id"] + "-" + df["ts"].astype(str) + "-"
                     + df["event_type"]),
        "user_id": None,
        "item_id": df["item_id"],
        "event_type": df["event_type"],
        "timestamp": pd.to_datetime(df["ts"], unit="ms", utc=True),
        "session_id": df["session_id"],
    })
    return Dataset(normalize_events(events))


def load_generic(
    events_path: str | Path,
    mapping: dict[str, str] | None = None,
    event_type_map: dict[str, str] | None = None,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
    timestamp_unit: str | None = None,
) -> Dataset:
    """Any CSV/Parquet/JSONL with a column mapping ``{recops_column: file_column}``.

    Columns spelled the way public logs often do (``SessionId``, ``ItemId``, ``Time``, ``UserId``) are
    recognised without a mapping. Required (after mapping): user_id or session_id, item_id,
    timestamp; ``event_type`` too, except
    in a click log (no such column: every row is a ``click``). A text file's delimiter (comma, tab,
    semicolon, pipe) is read off its header; numeric timestamps are epoch seconds, milliseconds,
    micro- or nanoseconds by their size.

    Args:
        events_path: the events file: .parquet/.pq, .jsonl/.ndjson, else CSV.
        mapping: recops column -> file column, for the columns named differently; None: names match.
        event_type_map: file event type -> recops event type; unlisted types are kept.
        items_path: an items file (same formats, recops column names); None: no items.
        users_path: a users file (same formats, recops column names); None: no users.
        timestamp_unit: the unit of numeric timestamps (``"s"``, ``"ms"``, ...); None: by their size
            (text is parsed as dates).

    Returns:
        The normalized events, items and users.

    Raises:
        ValueError: a mapped column is not in the file, or a required column is missing.
    """
    raw = _read_table(Path(events_path))
    mapping = mapping or {}
    missing = [src for src in mapping.values() if src not in raw.columns]
    if missing:
        raise ValueError(f"{events_path}: mapped columns {missing} not in file columns {list(raw.columns)}")
    df = raw.rename(columns={src: dst for dst, src in mapping.items()})
    df = df.rename(columns=_guess_columns([c for c in df.columns if c not in RECOPS_COLUMNS], set(df.columns)))
    if "event_type" not in df.columns and "item_id" in df.columns and "timestamp" in df.columns:
        df["event_type"] = CLICK  # a click log names no type: every row is a click
    required = ["item_id", "event_type", "timestamp"]
    absent = [c for c in required if c not in df.columns]
    if absent or ("user_id" not in df and "session_id" not in df):
        raise ValueError(
            f"{events_path}: needs columns user_id or session_id, item_id, timestamp (and event_type, unless "
            f"every row is a click) "
            f"(missing {absent or ['user_id/session_id']}); map yours with --map recops_col=file_col"
        )
    if event_type_map:
        df["event_type"] = df["event_type"].map(lambda v: event_type_map.get(v, v))
    unit = timestamp_unit or _epoch_unit(df["timestamp"])
    if unit:
        df["timestamp"] = pd.to_datetime(df["timestamp"], unit=unit, utc=True)
    items = normalize_items(_read_table(Path(items_path))) if items_path else Dataset(df).items
    users = normalize_users(_read_table(Path(users_path))) if users_path else Dataset(df).users
    return Dataset(normalize_events(df), items, users)


SOURCES = {"movielens": load_movielens, "online-retail": load_online_retail, "otto": load_otto}
