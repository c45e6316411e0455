"""Use cases: one module each, a command and a function that takes its ports by keyword."""
