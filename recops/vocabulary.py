"""The vocabulary recops is declared in: event types and their roles, the history length, the Feast
view names and the default half-lives. Every other module reads these names from here.

Like Metarank's declarative config, an event type is declared once with its implicit-rating weight
and the roles it plays; the code asks for a role ("the funnel", "cart activity") rather than spelling
type names, so a new type or a renamed one is one line here.

Roles:
- ``funnel``: the view -> click -> cart -> purchase steps; windowed counts and conversion rates are
  kept for each of them (``recops.features``), in this order;
- ``browse``: looking without committing (item trend, research intent);
- ``cart``: reveals what a shopper is willing to pay and makes a visit transactional;
- ``conversion``: the purchase (average price paid, conversion rates);
- ``negative``: takes interest back (not counted toward category affinity);
- ``rating``: carries its own value (1-5) instead of a weight;
- ``engage``: a click on a shown item: the numerator of an experiment's CTR (``cart`` is its conversion).
"""

from __future__ import annotations

from dataclasses import dataclass

# -- event types ----------------------------------------------------------------------------------
VIEW, CLICK, WISHLIST, CART, REMOVE_FROM_CART, PURCHASE, RATE = (
    "view", "click", "wishlist", "add_to_cart", "remove_from_cart", "purchase", "rate")


@dataclass(frozen=True)
class EventType:
    """A built-in event type: its implicit-rating weight, its roles and how a reason says it."""

    name: str
    weight: float
    roles: frozenset[str]
    verb: str  # past tense, for explanations: "the item was {verb} 40 times"


EVENT_TYPES: tuple[EventType, ...] = (
    EventType(VIEW, 1.0, frozenset({"funnel", "browse"}), "viewed"),
    EventType(CLICK, 2.0, frozenset({"funnel", "browse", "engage"}), "clicked"),
    EventType(WISHLIST, 3.0, frozenset(), "wishlisted"),
    EventType(CART, 4.0, frozenset({"funnel", "cart"}), "added to carts"),
    EventType(REMOVE_FROM_CART, -2.0, frozenset({"negative"}), "removed from carts"),
    EventType(PURCHASE, 5.0, frozenset({"funnel", "cart", "conversion"}), "bought"),
    EventType(RATE, 0.0, frozenset({"rating"}), "rated"),  # a rate event carries its own value (1-5)
)


def with_role(role: str) -> tuple[str, ...]:
    """The built-in event types that play ``role``, in declaration order.

    Args:
        role: one of the roles listed in this module's docstring.

    Returns:
        The type names, e.g. ``("view", "click", "add_to_cart", "purchase")`` for ``"funnel"``.
    """
    return tuple(t.name for t in EVENT_TYPES if role in t.roles)


DEFAULT_EVENT_WEIGHTS: dict[str, float] = {t.name: t.weight for t in EVENT_TYPES}
FUNNEL = with_role("funnel")  # view, click, add_to_cart, purchase
BROWSE = with_role("browse")  # view, click
CART_ACTIVITY = with_role("cart")  # add_to_cart, purchase
NEGATIVE = with_role("negative")  # remove_from_cart
ENGAGE = with_role("engage")  # click
CONVERSION = with_role("conversion")  # purchase: its value is an experiment's revenue
VERBS: dict[str, str] = {t.name: t.verb for t in EVENT_TYPES}
# items a user did one of these to are not recommended again (setting ``exclude_event_types``)
DEFAULT_EXCLUDE_TYPES: tuple[str, ...] = (PURCHASE, RATE)

# -- histories and sessions -----------------------------------------------------------------------
HISTORY_LEN = 20  # a user's or session's recent distinct items (newest first): served, trained, stored online
SESSION_GAP_SECONDS = 30 * 60  # a user's events closer than this to now are their live session

# -- half-lives (days) ----------------------------------------------------------------------------
RATING_HALF_LIFE_DAYS = 30.0  # implicit ratings (setting ``decay_half_life_days``)
POPULARITY_HALF_LIFE_DAYS = 7.0  # the popularity generator and the popularity baseline: "trending"

# -- online experiments ---------------------------------------------------------------------------
# The candidate generators recops can train (``recops.training.make_generator``), and the signals a request's
# ``weights`` may blend: those, and what follows the live session
GENERATORS = ("popularity", "covisit", "itemknn", "ease", "session", "svd", "content", "demographic")
NEXT_ITEM = "next_item"
SIGNALS = (*GENERATORS, NEXT_ITEM)

EXPERIMENT_METRICS = ("ctr", "conversion", "revenue")  # an experiment's primary metric is one of these
EXPERIMENT_METHODS = ("ab", "interleave")

# -- Feast: views, their push sources and offline tables ------------------------------------------
USER_VIEW, ITEM_VIEW, SESSION_VIEW, RECENT_VIEW = "user_behavior", "item_stats", "session_state", "user_recent"
PUSH_SOURCES = {view: f"{view}_push" for view in (USER_VIEW, ITEM_VIEW, SESSION_VIEW, RECENT_VIEW)}
OFFLINE_TABLES = {USER_VIEW: "user_features", ITEM_VIEW: "item_features", SESSION_VIEW: "session_state",
                  RECENT_VIEW: "user_recent"}
