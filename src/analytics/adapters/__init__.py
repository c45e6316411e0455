"""Adapters: the SDK-facing implementations of the domain ports, plus in-memory fakes."""
