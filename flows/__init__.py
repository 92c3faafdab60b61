"""recops flows."""
