"""A hook: what a store calls after a change, with the subscribers other plugins add at init."""
from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("appliance.metadata")


class Hook:
    """Calls every subscriber in order with the same arguments, in the caller's thread; a
    subscriber that fails is logged (the change it hears about is committed already)."""

    def __init__(self, name: str):
        self.name = name
        self._subscribers: list[Callable] = []

    def subscribe(self, fn: Callable) -> Callable:
        self._subscribers.append(fn)
        return fn

    def __call__(self, *args) -> None:
        for fn in self._subscribers:
            try:
                fn(*args)
            except Exception:
                log.exception("%s: subscriber %r failed", self.name, fn)


def no_hook(*args) -> None:
    """The hook of a store built without one (unit tests)."""
