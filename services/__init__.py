"""recops services."""
