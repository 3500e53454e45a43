"""Garbage collection: a pure mark over a snapshot of references, and the sweep around it.

Nodes are `(kind, namespace, id)` tuples: ("content", ns, digest), ("snapshot", ns,
"<snapshotter>/<key>"), ("ingest", ns, ref), ("image", ns, name), ("lease", ns, id),
("container", ns, id).

Two lists on each collector let each object kind join without editing this module:

- *reference sources* (`Collector(db, sources)`; the metadata plugin owns the list): a
  function `(conn, now_ns) -> Graph` reading the metadata tables and returning roots (what
  must live), labels (whose `containerd.io/gc.ref.*` entries are edges) and explicit edges
  (e.g. a snapshot's parent). Images, leases, content, ingests and containers are
  `BUILTIN_SOURCES` here; snapshots add theirs.
- *collectibles* (`Collector.register_collectible`, on the running collector): a kind
  whose objects die when unmarked: `all(conn) -> iterable of nodes` and
  `sweep(conn, dead_nodes)`. Content registers one; snapshotters add theirs.

A collection runs inside one metadata write transaction, so commits (which take the
same transaction) never interleave with the sweep.
"""
from __future__ import annotations

import datetime
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..process import failpoint, memory, metrics

log = logging.getLogger("appliance.gc")

Node = tuple[str, str, str]

LABEL_REF_CONTENT = "containerd.io/gc.ref.content"
LABEL_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
LABEL_ROOT = "containerd.io/gc.root"
LABEL_EXPIRE = "containerd.io/gc.expire"
LABEL_FLAT = "containerd.io/gc.flat"


@dataclass
class Graph:
    """A snapshot of references: roots (node, follow?), labels and explicit edges."""
    roots: list[tuple[Node, bool]] = field(default_factory=list)
    labels: dict[Node, dict[str, str]] = field(default_factory=dict)
    edges: dict[Node, list[Node]] = field(default_factory=dict)

    def merge(self, other: "Graph") -> "Graph":
        self.roots.extend(other.roots)
        for node, labels in other.labels.items():
            self.labels.setdefault(node, {}).update(labels)
        for node, targets in other.edges.items():
            self.edges.setdefault(node, []).extend(targets)
        return self


def label_refs(ns: str, labels: dict[str, str]) -> list[Node]:
    """The nodes an object's `containerd.io/gc.ref.*` labels point at."""
    out = []
    for key, value in labels.items():
        if key.startswith(LABEL_REF_CONTENT):
            out.append(("content", ns, value))
        elif key.startswith(LABEL_REF_SNAPSHOT):
            snapshotter = key[len(LABEL_REF_SNAPSHOT):].split("/", 1)[0]
            if snapshotter:
                out.append(("snapshot", ns, f"{snapshotter}/{value}"))
    return out


def parse_expiry(value: str) -> int | None:
    """RFC 3339 time → nanoseconds since the epoch (None when unparsable)."""
    text = value.strip().replace("Z", "+00:00")
    frac = ""
    if "." in text:  # Python wants at most 6 fractional digits
        head, rest = text.split(".", 1)
        frac = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        text = head + rest[len(frac):]
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp()) * 10**9 + int((frac + "000000000")[:9] or 0)


def expired(labels: dict[str, str], now_ns: int) -> bool:
    value = labels.get(LABEL_EXPIRE)
    if value is None:
        return False
    when = parse_expiry(value)
    return when is not None and when < now_ns


def lease_graph(ns: str, lease_id: str, labels: dict[str, str],
                resources: Iterable[tuple[str, str]], now_ns: int) -> Graph:
    """A live lease keeps itself and its resources (without their children when flat)."""
    if expired(labels, now_ns):
        return Graph()
    follow = LABEL_FLAT not in labels
    roots = [(("lease", ns, lease_id), True)]
    for rtype, rid in resources:
        if rtype == "content":
            roots.append((("content", ns, rid), follow))
        elif rtype == "ingests":
            roots.append((("ingest", ns, rid), follow))
        elif rtype.startswith("snapshots/"):
            roots.append((("snapshot", ns, f"{rtype[len('snapshots/'):]}/{rid}"), follow))
    return Graph(roots=roots)


def mark(graph: Graph) -> set[Node]:
    """Every node reachable from the roots through labels and edges (pure)."""
    live: set[Node] = set()
    queue: deque[Node] = deque()
    for node, follow in graph.roots:
        if follow:
            queue.append(node)
        else:
            live.add(node)
    while queue:
        node = queue.popleft()
        if node in live:
            continue
        live.add(node)
        queue.extend(graph.edges.get(node, ()))
        queue.extend(label_refs(node[1], graph.labels.get(node, {})))
    return live


# --- the collector ----------------------------------------------------------------------

Source = Callable[[object, int], Graph]


@dataclass
class Collectible:
    kind: str
    all: Callable[[object], Iterable[Node]]
    sweep: Callable[[object, list[Node]], int]   # returns how many objects it removed


@dataclass
class Stats:
    started: float
    elapsed: float
    removed: dict[str, int]


# At most one malloc_trim per this many seconds from collections. Trimming after every
# collection, i.e. after nearly every container deleted, handed back heap pages that the
# next container faulted in again: ≈ 34 page faults and ≈ 1 ms of CPU a `ctr run --rm`
# (bench section lifecycle, issue 24); a burst of deletions is trimmed by a later one.
TRIM_INTERVAL = 10.0


class Collector:
    """Runs one mark-and-sweep over the metadata database."""

    def __init__(self, db, sources: Iterable[Source] | None = None):
        self.db = db
        self.trimmed_at: float | None = None   # time.monotonic() of the last trim
        self.sources = list(BUILTIN_SOURCES if sources is None else sources)
        self.collectibles: dict[str, Collectible] = {}
        self.after_sweep: list[Callable[[], None]] = []   # work outside the transaction
        # work once the sweep is committed, before any other write: removing data whose
        # name a new write may reuse (a blob), so that a crash or a failed commit never
        # leaves a record without its data
        self.after_commit: list[Callable[[], None]] = []

    def register_collectible(self, kind: str, all_nodes, sweep) -> None:
        self.collectibles[kind] = Collectible(kind, all_nodes, sweep)

    def collect(self, now_ns: int | None = None) -> Stats:
        started = time.monotonic()
        now_ns = time.time_ns() if now_ns is None else now_ns
        removed: dict[str, int] = {}
        with self.db.exclusive():   # no other write until the after_commit hooks are done
            with self.db.write() as tx:
                graph = Graph()
                for source in self.sources:
                    graph.merge(source(tx, now_ns))
                live = mark(graph)
                for c in self.collectibles.values():
                    dead = [n for n in c.all(tx) if n not in live]
                    removed[c.kind] = c.sweep(tx, dead)   # also with none dead: orphans go too
                failpoint.hit("gc.sweep")   # swept, not yet committed
            for hook in self.after_commit:
                hook()
        for hook in self.after_sweep:
            try:
                hook()
            except Exception:
                log.exception("garbage collection hook failed")
        if self.trimmed_at is None or time.monotonic() - self.trimmed_at >= TRIM_INTERVAL:
            memory.trim()   # sweeps free many rows and paths at once
            self.trimmed_at = time.monotonic()
        stats = Stats(started, time.monotonic() - started, removed)
        log.debug("garbage collected in %.3fs: %s", stats.elapsed, removed)
        metrics.GC_RUNS.inc()
        metrics.GC_DURATION.observe(stats.elapsed)
        return stats


# --- the sources this module knows: images, leases, content and ingest labels ----------

def _images(conn, now_ns) -> Graph:
    graph = Graph()
    labels = {}
    for ns, name, key, value in conn.execute(
            "SELECT namespace, object, key, value FROM labels WHERE kind='image'"):
        labels.setdefault(("image", ns, name), {})[key] = value
    graph.labels.update(labels)
    for ns, name, digest in conn.execute("SELECT namespace, name, digest FROM images"):
        node = ("image", ns, name)
        graph.roots.append((node, True))
        graph.edges[node] = [("content", ns, digest)]
    return graph


def _leases(conn, now_ns) -> Graph:
    labels: dict[tuple[str, str], dict[str, str]] = {}
    for ns, lease, key, value in conn.execute(
            "SELECT namespace, object, key, value FROM labels WHERE kind='lease'"):
        labels.setdefault((ns, lease), {})[key] = value
    resources: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for ns, lease, rtype, rid in conn.execute(
            "SELECT namespace, lease, type, id FROM lease_resources"):
        resources.setdefault((ns, lease), []).append((rtype, rid))
    graph = Graph()
    for ns, lease in conn.execute("SELECT namespace, id FROM leases"):
        graph.merge(lease_graph(ns, lease, labels.get((ns, lease), {}),
                                resources.get((ns, lease), []), now_ns))
    return graph


def _content(conn, now_ns) -> Graph:
    graph = Graph()
    for ns, digest, key, value in conn.execute(
            "SELECT namespace, object, key, value FROM labels WHERE kind='content'"):
        node = ("content", ns, digest)
        graph.labels.setdefault(node, {})[key] = value
        if key == LABEL_ROOT:
            graph.roots.append((node, True))
    return graph


def _ingests(conn, now_ns) -> Graph:
    """An unleased ingest lives until it expires (a leased one, as long as its lease);
    it keeps the blob it shares."""
    graph = Graph()
    for ns, ref, expected, expires in conn.execute(
            "SELECT namespace, ref, expected, expires_at FROM ingests"):
        node = ("ingest", ns, ref)
        if expires and expires > now_ns:
            graph.roots.append((node, True))
        if expected:
            graph.edges[node] = [("content", ns, expected)]
    return graph


def _containers(conn, now_ns) -> Graph:
    """A container keeps its snapshot and whatever its gc.ref labels name."""
    graph = Graph()
    try:
        rows = conn.execute("SELECT namespace, id, snapshotter, snapshot_key FROM containers")
        rows = rows.fetchall()
    except Exception:  # the containers table belongs to another plugin family
        return graph
    for ns, cid, key, value in conn.execute(
            "SELECT namespace, object, key, value FROM labels WHERE kind='container'"):
        graph.labels.setdefault(("container", ns, cid), {})[key] = value
    for ns, cid, snapshotter, key in rows:
        node = ("container", ns, cid)
        graph.roots.append((node, True))
        if snapshotter and key:
            graph.edges[node] = [("snapshot", ns, f"{snapshotter}/{key}")]
    return graph


BUILTIN_SOURCES: tuple[Source, ...] = (_images, _leases, _content, _ingests, _containers)
