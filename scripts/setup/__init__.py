"""Finishing the virtualenv after pip (Java for TorchServe, activation)."""
