"""Kubernetes helpers that need no cluster (manifest checks); see ``lint``."""
