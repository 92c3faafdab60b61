"""Ranker features in words: turns LightGBM ``pred_contrib`` contributions into readable reasons."""

from __future__ import annotations

import re

from recops.vocabulary import FUNNEL, VERBS

GENERATOR_TEXT = {
    "popularity": "popular with shoppers right now",
    "covisit": "often viewed together with items you looked at recently",
    "itemknn": "similar to items you interacted with",
    "ease": "liked by people with a taste like yours",
    "svd": "liked by people with a taste like yours",
    "session": "fits what you are doing in this visit",
    "content": "its description matches what you looked at",
    "demographic": "popular with shoppers like you",
}
_VERB = {**{t: VERBS[t] for t in FUNNEL}, "events": "interacted with"}
_WINDOW = re.compile(rf"^([ui])_({'|'.join(_VERB)})_(\d+)d$")


def describe(feature: str, value: float, category: str) -> str:
    """What a feature's value says about this user and item, in a sentence fragment.

    Args:
        feature: a ranker feature name (e.g. ``covisit_rank``, ``i_view_7d``, ``x_price_ratio``).
        value: its value for this user and item.
        category: the item's category, for the category features.

    Returns:
        The fragment; for a feature it has no words for, "<feature> = <value>".
    """
    gen, _, part = feature.partition("_")
    if gen in GENERATOR_TEXT and part in ("score", "rank", "score_rel"):
        if part == "rank" and value > 100:
            return f"not proposed by {gen}"
        return f"{GENERATOR_TEXT[gen]} ({gen} {part.replace('_', ' ')} {value:.3g})"
    m = _WINDOW.match(feature)
    if m:
        verb, days = _VERB[m.group(2)], m.group(3)
        if m.group(1) == "i":
            return f"the item was {verb} {value:.0f} times in the last {days} day(s)"
        return f"you {verb} {value:.0f} items in the last {days} day(s)"
    return {
        "x_category_affinity": f"{category} is {value:.0%} of your activity",
        "x_is_top_category": f"{category} is {'' if value else 'not '}your favourite category",
        "x_price_ratio": (f"its price is {value:.2f}x what you usually pay" if value
                          else "you have no purchase price history"),
        "x_in_history": "you looked at it before" if value else "new to you",
        "i_trend": f"its activity today is {value:.2f}x its weekly rate",
        "i_conversion_30d": f"{value:.0%} of its views end in a purchase",
        "i_price": f"priced at {value:.2f}",
        "i_age_days": f"in the catalog for {value:.0f} days",
        "u_recency_hours": f"your last visit was {value:.1f} hours ago",
        "u_tenure_days": f"you have been shopping here for {value:.0f} days",
    }.get(feature, f"{feature} = {value:.3g}")
