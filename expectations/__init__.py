"""recops expectations."""
