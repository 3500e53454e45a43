"""Runtime v2: shims, bundles, the task manager and restart recovery."""
