"""Watching served models: offline input-drift reports (the live test runs in handlers/drift.py)."""
