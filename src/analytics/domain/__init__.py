"""The pure core: event models, validation rules, aggregation math and the ports.

Imports only the standard library and msgspec; a test keeps it that way.
"""
