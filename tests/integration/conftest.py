"""The `live_studio` session fixture lives in tests/conftest.py (one server for the whole run)."""
