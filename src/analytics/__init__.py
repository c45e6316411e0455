"""Product-analytics event service (hexagonal modular monolith on Dramatiq)."""

__version__ = "0.1.0"
