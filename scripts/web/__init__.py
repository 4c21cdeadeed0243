"""The web page to try every served model (scripts/web/app.py, its page in static/)."""
