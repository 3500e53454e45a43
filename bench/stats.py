"""Summaries of repeated measurements: min / median / max (and p99 for latency lists)."""
from __future__ import annotations

import statistics


def summary(values) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "max": max(values), "values": values}


def percentile(sorted_values, fraction: float) -> float:
    index = max(0, min(len(sorted_values) - 1, int(round(fraction * len(sorted_values))) - 1))
    return sorted_values[index]
