"""recops models."""
