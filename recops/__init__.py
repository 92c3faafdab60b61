"""recops: workflow-orchestrated MLOps for real-time behavioral recommendations."""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it, the OpenAPI document shows it
