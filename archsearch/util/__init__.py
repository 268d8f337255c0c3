"""Plumbing that imports nothing else of archsearch: error types, files written whole, locks, formatting, the
name → thing registry."""
