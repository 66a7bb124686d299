"""Differential privacy for federated learning: clipping, noise and accounting. Never Django."""
