"""The Python client of the trainyard API (no Flask import)."""
