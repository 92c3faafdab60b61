"""recops recops."""
