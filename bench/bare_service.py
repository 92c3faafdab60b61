"""The baseline for bench/serving.py and bench/realtime.py: bare BentoML endpoints with the same
server settings as the recops service, doing no work (no validation, no storage)."""

import os
from typing import Any

import bentoml


def _tracked(events: list) -> dict:
    """A body shaped like recops' TrackResponse."""
    def ids(key: str) -> list[str]:
        return sorted({e[key] for e in events if isinstance(e, dict) and e.get(key)})

    return {"accepted": len(events), "stored": len(events), "duplicates": 0, "unknown_items": [],
            "online_updated": ids("user_id"), "sessions_updated": ids("session_id"), "warning": None}


# the same workers as recops serve (bench/serving.py passes them)
@bentoml.service(name="bare", workers=int(os.environ.get("BARE_WORKERS", "1")), threads=4, traffic={"timeout": 30})
class Bare:
    @bentoml.api(route="/recommend")
    def recommend(self, user_id: str, k: int = 10) -> dict:
        return {"user_id": user_id,
                "items": [{"item_id": f"i{i}", "rank": i + 1, "score": 0.0, "reason": ""} for i in range(k)]}

    @bentoml.api(route="/track")
    def track(self, event: dict[str, Any], /) -> dict:
        return _tracked([event])

    @bentoml.api(route="/track/batch")
    def track_batch(self, events: list[dict[str, Any]], /) -> dict:
        return _tracked(events)
