"""Team-draft interleaving (Radlinski, Kurup and Joachims, 2008): one list from two rankers, each
item labelled with the team that contributed it, so one user's clicks compare the two directly.

Each round the team with fewer picks (a fair coin on a tie) adds its best item not yet in the list.
The coin is seeded by the caller (the request id), so a request replays the same list.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from recops.experiments.assignment import CHALLENGER, CONTROL


def team_draft(control: Sequence[str], challenger: Sequence[str], k: int, seed: int | str) -> list[tuple[str, str]]:
    """Interleave two ranked lists.

    Args:
        control: control's list, best first.
        challenger: the challenger's list, best first.
        k: the length of the interleaved list (shorter when both lists run out).
        seed: seeds the coin flips (e.g. the request id).

    Returns:
        (item, team) pairs, no item twice; ``team`` is ``CONTROL`` or ``CHALLENGER``.
    """
    rng = random.Random(str(seed))
    lists = {CONTROL: list(control), CHALLENGER: list(challenger)}
    nxt = {CONTROL: 0, CHALLENGER: 0}
    picks = {CONTROL: 0, CHALLENGER: 0}
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def advance(team: str) -> str | None:
        """The team's best item not yet shown (moving its pointer past shown ones)."""
        items = lists[team]
        while nxt[team] < len(items) and items[nxt[team]] in seen:
            nxt[team] += 1
        return items[nxt[team]] if nxt[team] < len(items) else None

    while len(out) < k:
        a, b = advance(CONTROL), advance(CHALLENGER)
        if a is None and b is None:
            break
        first = CONTROL if picks[CONTROL] < picks[CHALLENGER] else CHALLENGER
        if picks[CONTROL] == picks[CHALLENGER]:
            first = CONTROL if rng.random() < 0.5 else CHALLENGER
        team = first if (a if first == CONTROL else b) is not None else (CHALLENGER if first == CONTROL else CONTROL)
        item = a if team == CONTROL else b
        out.append((item, team))
        seen.add(item)
        picks[team] += 1
    return out


def team_credit(shown: Sequence[tuple[str, str]], engaged: set[str]) -> dict[str, int]:
    """How many of a list's engaged-with items each team contributed.

    Args:
        shown: the interleaved list, (item, team) pairs.
        engaged: the items the user clicked (or bought) from it.

    Returns:
        team -> credit.
    """
    credit = {CONTROL: 0, CHALLENGER: 0}
    for item, team in shown:
        if item in engaged:
            credit[team] += 1
    return credit
