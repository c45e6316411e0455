"""The Falcon HTTP API."""
