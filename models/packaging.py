"""The MLflow pyfunc wrapper: one logged model carries everything needed to serve.

``predict`` takes a frame with ``user_id`` and optional ``history`` (list of recent item ids,
newest first), ``exclude`` (list) and ``k``; it answers one row per recommended item.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from recops.models.recommender import RecopsModel
from recops.models.request import RecommendRequest


class RecopsPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        """Load the RecopsModel logged as the ``model`` artifact (MLflow calls this once, at load).

        Args:
            context: MLflow's PythonModelContext; ``context.artifacts["model"]`` is the saved model's local path.
        """
        self.model = RecopsModel.load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Recommend for each row of ``model_input``, leaving out what the model's item table marks out
        of stock; a row the model has nothing for gets the most popular items.

        Args:
            context: MLflow's PythonModelContext (unused: ``load_context`` loaded the model).
            model_input: one request per row: ``user_id`` and optional ``history`` (list-like, newest
                first), ``exclude`` (list-like) and ``k``.
            params: MLflow's inference parameters; ``k`` is the list length for rows without one (default 10).

        Returns:
            One row per recommended item: user_id, item_id, rank (1: best), score.
        """
        k_default = int((params or {}).get("k", 10))
        rows = []
        for rec in model_input.to_dict("records"):
            hist = _as_list(rec.get("history"))
            excl = set(_as_list(rec.get("exclude")))
            k = int(rec.get("k") or k_default)
            # no live catalog here: the stock is the model's item table's
            req = RecommendRequest(k=k, user_id=rec["user_id"], history=tuple(hist),
                                   exclude=frozenset(excl) | self.model.items.out_of_stock())
            recs = self.model.recommend(req) or self.model.popular(k, excl)
            rows += [(rec["user_id"], r.item_id, n + 1, r.score) for n, r in enumerate(recs)]
        return pd.DataFrame(rows, columns=["user_id", "item_id", "rank", "score"])


def _as_list(v) -> list[str]:
    """A list-like cell (list, tuple, numpy array) as a list; anything else (None, NaN) as empty."""
    if v is None or isinstance(v, (str, float)):
        return []
    return [str(x) for x in v]
