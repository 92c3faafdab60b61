"""The baseline for bench/serving.py: a bare BentoML endpoint with the same server settings."""

import bentoml


@bentoml.service(name="bare", workers=1, threads=4, traffic={"timeout": 30})
class Bare:
    @bentoml.api(route="/recommend")
    def recommend(self, user_id: str, k: int = 10) -> dict:
        return {"user_id": user_id, "items": [{"item_id": f"i{i}", "rank": i + 1, "score": 0.0, "reason": ""} for i in range(k)]}
