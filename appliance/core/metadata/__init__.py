"""Namespaced metadata on sqlite3: one table per object kind, labels beside them."""
