"""Entrypoints: the Falcon API, Dramatiq actors and workers, the scheduler and the CLI."""
