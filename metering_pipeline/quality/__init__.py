"""Validation of raw usage: row routing rules in SQL, and the Great Expectations suite."""
