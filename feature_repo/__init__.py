"""recops feature_repo."""
