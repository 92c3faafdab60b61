"""The MLflow pyfunc wrapper: one logged model carries everything needed to serve.

``predict`` takes a frame with ``user_id`` and optional ``history`` (list of recent item ids,
newest first), ``exclude`` (list) and ``k``; it answers one row per recommended item.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from recops.models.recommender import RecopsModel


class RecopsPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model = RecopsModel.load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k_default = int((params or {}).get("k", 10))
        rows = []
        for rec in model_input.to_dict("records"):
            hist = rec.get("history")
            hist = list(hist) if isinstance(hist, (list, tuple)) or hasattr(hist, "__len__") and not isinstance(hist, str) else []
            excl = rec.get("exclude")
            excl = set(excl) if excl is not None and not isinstance(excl, (str, float)) else set()
            k = int(rec.get("k") or k_default)
            recs = self.model.recommend(rec["user_id"], k, hist, None, exclude=excl) or self.model.popular(k, excl)
            rows += [(rec["user_id"], r.item_id, n + 1, r.score) for n, r in enumerate(recs)]
        return pd.DataFrame(rows, columns=["user_id", "item_id", "rank", "score"])
