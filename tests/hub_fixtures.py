"""Fixtures for the local Hub-compatible server."""
