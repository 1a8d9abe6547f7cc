"""Integration tests: real traffic through network namespaces (marked `netns` by tests/conftest.py)."""
