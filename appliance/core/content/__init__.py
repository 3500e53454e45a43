"""The blob store on disk: `blobs/<alg>/<hex>` and resumable ingests (see store.py)."""
from .store import Ingest, LocalStore, Writer, parse_digest

__all__ = ["Ingest", "LocalStore", "Writer", "parse_digest"]
