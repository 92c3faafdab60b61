"""Personalised deals behind ``POST /deals``: a discount per recommended item, within hard caps.

The discount grows with the user's price sensitivity (``p_price_sensitivity`` of ``recops.profile``,
0.5 neutral) and with how little demand the item has (a 0..1 percentile of its popularity or trend),
is scaled by the month's and the region's factors, and is then clamped so that whatever the inputs
(NaN, inf, negative, huge) the caps hold:

- the discount lies in [0, max_discount]; it aims at least at min_discount (a deal worth showing),
  less only where the floor or the rounding to the cent leaves no room;
- the deal price lies in [floor, list price], floor = floor_ratio * list price (we know no costs, so
  the floor is a share of the list price: the most margin a deal may give away);
- the deal price is rounded UP to the cent, so rounding never pushes it below the floor.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pandas as pd

MAX_PRICE = 1e12  # above this a cent is below float resolution: such a "price" is not a price
# raw discount = max_discount * (BASE + W_SENSITIVITY * sensitivity + W_DEMAND * (1 - demand)) * factors:
# a neutral user on a median item gets 57.5% of the cap; weights sum to 1 so the cap is reached at
# full sensitivity and no demand (before season and region factors).
BASE, W_SENSITIVITY, W_DEMAND = 0.15, 0.5, 0.35
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


def _default_season() -> dict[int, float]:
    return {1: 1.2, 7: 1.1, 11: 1.25, 12: 1.1}  # January and summer sales, Black Friday, the holidays


@dataclass(frozen=True)
class DealPolicy:
    """Caps and multipliers of deal pricing; validated on construction."""

    max_discount: float = 0.5
    min_discount: float = 0.05
    floor_ratio: float = 0.6  # a deal price is never below this share of the list price
    ttl_hours: float = 48.0
    season_boost: Mapping[int, float] = field(default_factory=_default_season)  # month (1-12) -> factor
    region_factor: Mapping[str, float] = field(default_factory=dict)  # region -> factor, absent: 1

    def __post_init__(self) -> None:
        nums = (self.max_discount, self.min_discount, self.floor_ratio, self.ttl_hours)
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in nums):
            raise ValueError("deal policy numbers must be finite")
        if not 0.0 <= self.min_discount <= self.max_discount <= 0.9:
            raise ValueError(f"need 0 <= min_discount <= max_discount <= 0.9, got {self.min_discount}, "
                             f"{self.max_discount}")
        if not 0.0 <= self.floor_ratio <= 1.0:
            raise ValueError(f"floor_ratio must lie in [0, 1], got {self.floor_ratio}")
        if self.ttl_hours <= 0:
            raise ValueError(f"ttl_hours must be positive, got {self.ttl_hours}")
        if any(m not in range(1, 13) for m in self.season_boost):
            raise ValueError("season_boost keys must be months 1-12")
        for name, factors in (("season_boost", self.season_boost), ("region_factor", self.region_factor)):
            if not all(isinstance(f, numbers.Real) and math.isfinite(f) and 0 < f <= 10 for f in factors.values()):
                raise ValueError(f"{name} factors must lie in (0, 10]")

    @classmethod
    def from_settings(cls, settings) -> DealPolicy:
        """From the ``Settings`` fields ``deal_*`` that exist (getattr), the defaults for the rest.

        Args:
            settings: a ``recops.config.Settings`` or any object with ``deal_*`` attributes; season_boost
                keys may be month strings ("1".."12").

        Returns:
            The policy.

        Raises:
            ValueError: the settings break the policy's bounds (see the class).
        """
        d = cls()
        get = lambda name, default: getattr(settings, f"deal_{name}", default)
        max_discount = float(get("max_discount", d.max_discount))
        return cls(
            max_discount=max_discount,
            min_discount=float(get("min_discount", min(d.min_discount, max_discount))),
            floor_ratio=float(get("floor_ratio", d.floor_ratio)),
            ttl_hours=float(get("ttl_hours", d.ttl_hours)),
            season_boost={int(k): float(v) for k, v in get("season_boost", d.season_boost).items()},
            region_factor={str(k): float(v) for k, v in get("region_factor", d.region_factor).items()},
        )

    def factor(self, month, region) -> float:
        """Season x region multiplier; an unknown or malformed month or region counts 1.

        Args:
            month: the month, an integer 1-12 (numpy integers too; bools are malformed).
            region: the region name, looked up in ``region_factor``.

        Returns:
            ``season_boost[month] * region_factor[region]``, each factor 1 where absent.
        """
        m = _month(month)
        season = self.season_boost.get(m, 1.0) if m is not None else 1.0
        place = self.region_factor.get(region, 1.0) if isinstance(region, str) else 1.0
        return season * place

    def floor_price(self, price: float) -> float:
        """The lowest deal price allowed for a list price.

        Args:
            price: the list price.

        Returns:
            ``floor_ratio * price``.
        """
        return self.floor_ratio * price


def _month(month) -> int | None:
    """1-12 from an integer-like month (numpy ints too), else None."""
    if isinstance(month, bool) or not isinstance(month, numbers.Integral):
        return None
    return int(month) if 1 <= month <= 12 else None


def _unit(x, default: float) -> float:
    """A 0..1 score from anything: NaN/None/garbage -> default, +-inf and out-of-range -> the bound."""
    try:
        x = float(x)
    except (TypeError, ValueError, OverflowError):
        return default
    return default if math.isnan(x) else min(max(x, 0.0), 1.0)


def _cents_up(x: float) -> float:
    """The smallest whole-cent amount >= x (float-safe: 0.07 * 100 is 7.000000000000001)."""
    c = math.ceil(round(x * 100.0, 6)) / 100.0
    return c if c >= x else (math.ceil(round(x * 100.0, 6)) + 1) / 100.0


def valid_price(price) -> float | None:
    """``price`` as a float when it can carry a deal (finite, > 0, <= MAX_PRICE), else None.

    Args:
        price: anything: a number, a numeric string, None, NaN, ...

    Returns:
        The price as a float, or None.
    """
    try:
        p = float(price)
    except (TypeError, ValueError, OverflowError):
        return None
    return p if math.isfinite(p) and 0.0 < p <= MAX_PRICE else None


def price_deal(price, price_sensitivity, demand, month, region,
               policy: DealPolicy | None = None) -> tuple[float, float] | None:
    """``(discount, deal_price)`` for one item, or None when ``price`` is no valid price (see valid_price).

    Total and monotone: a higher sensitivity or a lower demand never lowers the discount. NaN
    sensitivity or demand count as neutral (0.5); out-of-range values are clipped to [0, 1]. When no
    whole-cent price lies between the floor and the list price (prices under a cent), the deal price
    is the list price and the discount 0.

    Args:
        price: the list price (anything; see valid_price).
        price_sensitivity: the user's 0..1 price sensitivity (0.5 neutral; higher: a larger discount).
        demand: the item's 0..1 demand percentile (lower: a larger discount).
        month: the month 1-12, for the season factor (see DealPolicy.factor).
        region: the user's region, for the region factor.
        policy: the caps and factors; None: ``DealPolicy()``.

    Returns:
        The discount (a share of the list price, 0..max_discount) and the deal price, or None.
    """
    policy = policy or DealPolicy()
    p = valid_price(price)
    if p is None:
        return None
    s, d = _unit(price_sensitivity, 0.5), _unit(demand, 0.5)
    raw = policy.max_discount * (BASE + W_SENSITIVITY * s + W_DEMAND * (1.0 - d)) * policy.factor(month, region)
    want = min(max(raw, policy.min_discount), policy.max_discount)
    deal = min(_cents_up(max(p * (1.0 - want), policy.floor_price(p))), p)
    return min(max(1.0 - deal / p, 0.0), policy.max_discount), deal


def demand_percentile(popularity: pd.Series) -> pd.Series:
    """Item popularity (counts, trend, ...) -> 0..1 percentile rank; NaN stays NaN (neutral later).

    Args:
        popularity: a demand score per item (higher: more demand), indexed by item_id.

    Returns:
        The percentile ranks in (0, 1] (ties averaged), indexed like ``popularity``.
    """
    return popularity.rank(pct=True, method="average")


def _reason(discount: float, sensitivity: float, demand: float, category: str | None, month: int, region,
            policy: DealPolicy) -> str:
    """Readable grounds for the deal, e.g. "12% off this kitchen item: you often choose lower-priced
    items; fewer shoppers are after it this week". Only the grounds that raised the discount."""
    why = []
    if sensitivity >= 0.6:
        why.append("you often choose lower-priced items")
    if demand <= 0.3:
        why.append("fewer shoppers are after it this week")
    if policy.season_boost.get(month, 1.0) > 1.0:
        why.append(f"{MONTHS[month - 1]} savings")
    if isinstance(region, str) and policy.region_factor.get(region, 1.0) > 1.0:
        why.append(f"an offer for shoppers in {region}")
    what = f"this {category} item" if category else "this item"
    return f"{round(discount * 100)}% off {what}: " + ("; ".join(why) or "picked for you")


def _text(v) -> str | None:
    return v if isinstance(v, str) and v else None


def _sort_key(candidate: tuple[str, float]) -> float:
    """Best score first; NaN and non-numbers last."""
    try:
        s = float(candidate[1])
    except (TypeError, ValueError, OverflowError):
        return math.inf
    return math.inf if math.isnan(s) else -s


def make_deals(candidates: Iterable[tuple[str, float]], item_info: pd.DataFrame, user_sensitivity, region, now,
               policy: DealPolicy | None = None, k: int = 10) -> list[dict]:
    """Up to ``k`` deals for the best-scored candidates, best first.

    ``item_info`` is indexed by item_id with ``price`` and optionally ``title``, ``category`` and
    ``demand`` (0..1, see demand_percentile; absent or NaN: neutral). Candidates unknown to
    ``item_info``, without a valid price or without a possible discount are skipped. ``now`` is a
    timestamp (naive: UTC); its month selects the season factor. ``expires_at`` is ISO 8601 UTC.

    Args:
        candidates: (item_id, score) pairs in any order; NaN or non-numeric scores rank last.
        item_info: the items' price and details, as above; for a duplicated item_id the last row counts.
        user_sensitivity: the user's ``p_price_sensitivity`` (0..1; NaN or None: neutral 0.5).
        region: the user's region, for the region factor and the reason.
        now: the time of the offer (anything ``pd.Timestamp`` takes).
        policy: the caps and factors; None: ``DealPolicy()``.
        k: the most deals returned.

    Returns:
        One dict per deal with item_id, title (the item_id when it has none), list_price, deal_price, discount
        (a share, floored to 4 decimals), expires_at, reason (readable text) and score.
    """
    policy = policy or DealPolicy()
    now = pd.Timestamp(now)
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    expires = (now + pd.Timedelta(hours=policy.ttl_hours)).isoformat()
    sensitivity = _unit(user_sensitivity, 0.5)
    info = item_info[~item_info.index.duplicated(keep="last")]
    deals = []
    for item_id, score in sorted(candidates, key=_sort_key):
        if len(deals) >= k:
            break
        if item_id not in info.index:
            continue
        row = info.loc[item_id]
        demand = _unit(row.get("demand"), 0.5)
        priced = price_deal(row.get("price"), sensitivity, demand, now.month, region, policy)
        if priced is None or priced[0] <= 0.0:
            continue
        discount, deal_price = priced
        deals.append({
            "item_id": str(item_id),
            "title": _text(row.get("title")) or str(item_id),
            "list_price": valid_price(row.get("price")),
            "deal_price": deal_price,
            "discount": math.floor(discount * 10_000) / 10_000,  # floored: the shown figure never exceeds the cap
            "expires_at": expires,
            "reason": _reason(discount, sensitivity, demand, _text(row.get("category")), now.month, region, policy),
            "score": float(score),
        })
    return deals
