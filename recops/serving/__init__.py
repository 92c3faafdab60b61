"""What the HTTP service does, as plain classes, one module per endpoint family.

``services/service.py`` is a thin BentoML shell over :class:`Serving` (``runtime.py``). Keeping the
work here keeps the service module's imports light (BentoML's supervisor process imports it too) and
lets the logic run in-process in tests, benchmarks and batch scoring.
"""

from recops.serving.errors import NoModel, UnknownItem, UnknownUser
from recops.serving.runtime import Serving

__all__ = ["NoModel", "Serving", "UnknownItem", "UnknownUser"]
