"""Snapshotters: overlayfs and native backends on disk, namespaced metadata in sqlite."""
